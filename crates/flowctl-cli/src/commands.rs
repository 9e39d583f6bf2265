//! Client commands. Each builds a request, calls any node through `flowctl-client`, and prints.

use crate::output::{age, print};
use crate::{ConsistencyArg, Format, Global};
use anyhow::Context;
use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::cluster_service_client::ClusterServiceClient;
use flowctl_client::proto::admin::v1::component_service_client::ComponentServiceClient;
use flowctl_client::proto::admin::v1::pipeline_service_client::PipelineServiceClient;
use flowctl_client::{parse_endpoints, AuthChannel, Client, MAX_REPLY_BYTES};
use serde_json::{json, Value};
use std::time::Duration;

/// A client of `--endpoints` that sends the invocation's token (if any) on every call, over
/// TLS as `--cacert`, `--cert` and `--key` say.
pub(crate) fn client(g: &Global) -> anyhow::Result<Client> {
    let token = crate::credentials::token(g)?;
    let tls = crate::credentials::tls()?;
    Ok(Client::new_with_tls(
        &parse_endpoints(&g.endpoints),
        Duration::from_secs(g.timeout),
        tls,
    )?
    .with_token(token.as_deref())?)
}

fn pipelines(ch: AuthChannel) -> PipelineServiceClient<AuthChannel> {
    PipelineServiceClient::new(ch)
        .max_decoding_message_size(MAX_REPLY_BYTES)
        .max_encoding_message_size(MAX_REPLY_BYTES)
}

fn clusters(ch: AuthChannel) -> ClusterServiceClient<AuthChannel> {
    ClusterServiceClient::new(ch).max_decoding_message_size(MAX_REPLY_BYTES)
}

pub(crate) fn consistency(g: &Global) -> i32 {
    match g.consistency {
        ConsistencyArg::Linearizable => pb::Consistency::Linearizable as i32,
        ConsistencyArg::Stale => pb::Consistency::Stale as i32,
    }
}

/// A status as one line: the server's message says what and where.
pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    let msg = s.message().replace('\n', " ");
    match s.code() {
        tonic::Code::Unavailable => anyhow::anyhow!("cluster unavailable: {msg}"),
        tonic::Code::Unauthenticated => anyhow::anyhow!(
            "not authenticated: {msg} (give a token with --token, --token-file or FLOWCTL_TOKEN)"
        ),
        tonic::Code::PermissionDenied => anyhow::anyhow!("permission denied: {msg}"),
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            anyhow::anyhow!("request rejected: {msg}")
        }
        _ => anyhow::anyhow!("{msg}"),
    }
}

pub(crate) fn ts_ms(t: &Option<prost_types::Timestamp>) -> u64 {
    t.as_ref()
        .map(|t| t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000)
        .unwrap_or(0)
}

pub(crate) fn rfc3339(ms: u64) -> String {
    // One formatter for the whole project: the server's, without the milliseconds.
    let full = flowctl_server::logs::rfc3339_ms(ms);
    match full.split_once('.') {
        Some((secs, _)) => format!("{secs}Z"),
        None => full,
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn pipeline_json(p: &pb::Pipeline) -> Value {
    json!({
        "name": p.name,
        "id": p.id,
        "generation": p.generation,
        "revision": p.revision,
        "created_at": rfc3339(ts_ms(&p.created_at)),
        "updated_at": rfc3339(ts_ms(&p.updated_at)),
        "ready": p.ready,
        "desired": p.desired,
        "status": p.status,
        "spec_yaml": p.spec_yaml,
    })
}

fn pipeline_rows(ps: &[pb::Pipeline], wide: bool) -> Vec<Vec<String>> {
    let now = now_ms();
    let mut rows = vec![if wide {
        vec![
            "NAME",
            "ID",
            "GENERATION",
            "READY",
            "STATUS",
            "REVISION",
            "CREATED",
            "UPDATED",
        ]
    } else {
        vec!["NAME", "ID", "GENERATION", "READY", "STATUS", "AGE"]
    }
    .into_iter()
    .map(String::from)
    .collect()];
    for p in ps {
        let created = ts_ms(&p.created_at);
        rows.push(if wide {
            vec![
                p.name.clone(),
                p.id.clone(),
                p.generation.to_string(),
                format!("{}/{}", p.ready, p.desired),
                p.status.clone(),
                p.revision.to_string(),
                rfc3339(created),
                rfc3339(ts_ms(&p.updated_at)),
            ]
        } else {
            vec![
                p.name.clone(),
                p.id.clone(),
                p.generation.to_string(),
                format!("{}/{}", p.ready, p.desired),
                p.status.clone(),
                age(created, now),
            ]
        });
    }
    rows
}

pub(crate) fn note_stale(g: &Global, meta: &Option<pb::ReadMeta>) {
    if g.consistency == ConsistencyArg::Stale {
        if let Some(m) = meta {
            eprintln!(
                "stale read from node {}: applied index {}, last known commit index {}",
                m.node_id, m.applied_index, m.known_commit_index
            );
        }
    }
}

/// The files `-f` names: a file, `-` (standard input), or every `.yaml`/`.yml` file of a
/// directory in name order.
fn apply_inputs(file: &str) -> anyhow::Result<Vec<(String, String)>> {
    if file == "-" {
        let text =
            std::io::read_to_string(std::io::stdin()).context("while reading standard input")?;
        return Ok(vec![("-".into(), text)]);
    }
    let path = std::path::Path::new(file);
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read directory {file}"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        if files.is_empty() {
            anyhow::bail!("{file} has no .yaml or .yml files");
        }
        return files
            .into_iter()
            .map(|p| {
                let name = p.display().to_string();
                std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {name}"))
                    .map(|t| (name, t))
            })
            .collect();
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
    Ok(vec![(file.to_owned(), text)])
}

/// A minimal line diff (longest common subsequence), `-`/`+`/` ` prefixed.
fn line_diff(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", b[j]));
            j += 1;
        } else {
            out.push(format!("- {}", a[i]));
            i += 1;
        }
    }
    out
}

/// How `flowctl apply` stores.
pub struct ApplyOptions {
    pub dry_run: bool,
    pub allow_unregistered_types: bool,
    pub if_generation: Option<u64>,
}

pub async fn apply(g: &Global, file: &str, opts: &ApplyOptions) -> anyhow::Result<()> {
    let ApplyOptions {
        dry_run,
        allow_unregistered_types,
        if_generation,
    } = *opts;
    let inputs = apply_inputs(file)?;
    if if_generation.is_some() && inputs.len() != 1 {
        anyhow::bail!(
            "--if-generation applies to one document; {file} has {}",
            inputs.len()
        );
    }
    // Check every file locally first (the same rules the server applies), so that a bad file
    // in a directory stops the whole apply before anything is stored.
    for (name, text) in &inputs {
        flowctl_spec::validate_pipeline(name, text)?;
    }
    let c = client(g)?;
    let mut reports = Vec::new();
    for (name, yaml) in inputs {
        let req = pb::ApplyPipelineRequest {
            yaml: yaml.clone(),
            file_name: name,
            dry_run,
            allow_unregistered_types,
            if_generation,
        };
        let resp = c
            .call(|ch| {
                let req = req.clone();
                async move { pipelines(ch).apply_pipeline(req).await }
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let p = resp.pipeline.clone().unwrap_or_default();
        let result = match pb::ApplyResult::try_from(resp.result) {
            Ok(pb::ApplyResult::Created) => "created",
            Ok(pb::ApplyResult::Configured) => "configured",
            Ok(pb::ApplyResult::Unchanged) => "unchanged",
            _ => "applied",
        };
        let name = flowctl_spec::validate_pipeline("-", &yaml)
            .map(|v| v.name().to_owned())
            .unwrap_or_default();
        match g.output {
            Format::Table | Format::Wide => {
                let suffix = if dry_run { " (dry run)" } else { "" };
                if p.id.is_empty() {
                    println!("pipeline/{name} {result}{suffix}");
                } else {
                    println!(
                        "pipeline/{name} {result}{suffix} (id {}, generation {})",
                        p.id, p.generation
                    );
                }
                for ch in &resp.changes {
                    if ch.changed.is_empty() {
                        println!("  {} {}", ch.action, ch.component);
                    } else {
                        println!(
                            "  {} {} ({})",
                            ch.action,
                            ch.component,
                            ch.changed.join(", ")
                        );
                    }
                }
                if dry_run && result != "unchanged" {
                    for l in line_diff(&resp.stored_yaml, &yaml) {
                        println!("{l}");
                    }
                }
            }
            _ => {
                let mut v = if p.id.is_empty() {
                    json!({ "name": name })
                } else {
                    pipeline_json(&p)
                };
                v["result"] = json!(result);
                v["dry_run"] = json!(dry_run);
                v["applied_index"] = json!(resp.applied_index);
                v["changes"] = json!(resp
                    .changes
                    .iter()
                    .map(|c| json!({"component": c.component, "action": c.action, "changed": c.changed}))
                    .collect::<Vec<_>>());
                reports.push(v);
            }
        }
    }
    if !matches!(g.output, Format::Table | Format::Wide) {
        let v = if reports.len() == 1 {
            reports.remove(0)
        } else {
            Value::Array(reports)
        };
        print(g.output, &v, |_| vec![])?;
    }
    Ok(())
}

/// One pipeline by name, with the read's meta.
async fn fetch_pipeline(g: &Global, name: &str) -> anyhow::Result<pb::GetPipelineResponse> {
    let c = client(g)?;
    let req = pb::GetPipelineRequest {
        name: name.to_owned(),
        consistency: consistency(g),
    };
    Ok(c.call(|ch| {
        let req = req.clone();
        async move { pipelines(ch).get_pipeline(req).await }
    })
    .await
    .map_err(status_err)?
    .into_inner())
}

pub async fn describe_pipeline(g: &Global, name: &str) -> anyhow::Result<()> {
    let resp = fetch_pipeline(g, name).await?;
    let p = resp.pipeline.unwrap_or_default();
    let mut v = pipeline_json(&p);
    v["placements"] = json!(p
        .placements
        .iter()
        .collect::<std::collections::BTreeMap<_, _>>());
    v["instances"] = Value::Array(
        p.instances
            .iter()
            .map(|i| {
                json!({
                    "key": i.key,
                    "component_id": i.component_id,
                    "node_id": i.node_id,
                    "node_addr": i.node_addr,
                    "state": i.state,
                    "healthy": i.healthy,
                    "pid": i.pid,
                    "restarts": i.restarts,
                    "started_at": rfc3339(ts_ms(&i.started_at)),
                    "last_exit": i.last_exit,
                    "spec_hash": i.spec_hash,
                })
            })
            .collect(),
    );
    v["events"] = Value::Array(
        p.events
            .iter()
            .map(|e| {
                json!({
                    "time": rfc3339(ts_ms(&e.time)),
                    "node_id": e.node_id,
                    "instance": e.instance,
                    "reason": e.reason,
                    "message": e.message,
                    "type": if e.warning { "Warning" } else { "Normal" },
                })
            })
            .collect(),
    );
    match g.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        _ => {
            println!("Name:        {}", p.name);
            println!("ID:          {}", p.id);
            println!("Generation:  {}", p.generation);
            println!(
                "Status:      {} ({}/{} ready)",
                p.status, p.ready, p.desired
            );
            println!("Updated:     {}", rfc3339(ts_ms(&p.updated_at)));
            println!("Placements:");
            let mut placements: Vec<_> = p.placements.iter().collect();
            placements.sort();
            for (k, n) in placements {
                println!("  {k:<30} {n}");
            }
            println!("Instances:");
            if p.instances.is_empty() {
                println!("  <none reported>");
            } else {
                println!(
                    "  {:<28} {:<6} {:<13} {:<8} {:<8} {:<9} LAST EXIT",
                    "INSTANCE", "NODE", "STATE", "HEALTHY", "PID", "RESTARTS"
                );
                for i in &p.instances {
                    println!(
                        "  {:<28} {:<6} {:<13} {:<8} {:<8} {:<9} {}",
                        i.key,
                        i.node_id,
                        i.state,
                        if i.healthy { "yes" } else { "no" },
                        if i.pid == 0 {
                            "-".to_owned()
                        } else {
                            i.pid.to_string()
                        },
                        i.restarts,
                        if i.last_exit.is_empty() {
                            "-"
                        } else {
                            &i.last_exit
                        }
                    );
                }
            }
            println!("Spec:");
            for l in p.spec_yaml.lines() {
                println!("  {l}");
            }
            println!("Events:");
            if p.events.is_empty() {
                println!("  <none>");
            } else {
                let now = now_ms();
                println!(
                    "  {:<8} {:<12} {:<6} {:<6} {:<28} MESSAGE",
                    "TYPE", "REASON", "AGE", "NODE", "INSTANCE"
                );
                // The most recent 20, oldest first, as kubectl describe shows them.
                for e in p.events.iter().skip(p.events.len().saturating_sub(20)) {
                    println!(
                        "  {:<8} {:<12} {:<6} {:<6} {:<28} {}",
                        if e.warning { "Warning" } else { "Normal" },
                        e.reason,
                        crate::output::age(ts_ms(&e.time), now),
                        e.node_id,
                        if e.instance.is_empty() {
                            "-"
                        } else {
                            &e.instance
                        },
                        e.message
                    );
                }
            }
        }
    }
    Ok(())
}

/// `flowctl graph --pipeline NAME`: the stored spec, with each component coloured by how
/// many of its replicas are registered and healthy.
pub async fn graph_live(
    g: &Global,
    name: &str,
    args: &crate::spec_cmds::GraphArgs,
) -> anyhow::Result<()> {
    let resp = fetch_pipeline(g, name).await?;
    let p = resp.pipeline.unwrap_or_default();
    let spec = flowctl_spec::validate_pipeline(name, &p.spec_yaml)
        .map_err(|e| anyhow::anyhow!("the stored pipeline {name} does not validate: {e}"))?;
    let mut overlay = flowctl_spec::graph::Overlay::default();
    for (_, c) in spec.components() {
        let ready = p
            .instances
            .iter()
            .filter(|i| {
                i.healthy
                    && i.key
                        .rsplit_once('/')
                        .is_some_and(|(cid, _)| cid == c.id.as_str())
            })
            .count() as u32;
        overlay.health.insert(
            c.id.to_string(),
            flowctl_spec::graph::ComponentHealth::from_counts(ready, c.replicas),
        );
    }
    // Edges show the registered version of each event type.
    let c = client(g)?;
    let req = pb::ListSubjectsRequest {
        consistency: consistency(g),
    };
    let subjects = c
        .call(|ch| async move {
            flowctl_client::proto::admin::v1::schema_service_client::SchemaServiceClient::new(ch)
                .max_decoding_message_size(MAX_REPLY_BYTES)
                .list_subjects(req)
                .await
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .subjects;
    for s in subjects {
        if s.latest_version > 0 {
            overlay.event_type_notes.insert(
                s.subject,
                format!("v{}, id {}", s.latest_version, s.latest_id),
            );
        }
    }
    crate::spec_cmds::write_graph(args, &spec, &overlay)
}

pub async fn get_pipelines(g: &Global) -> anyhow::Result<()> {
    let c = client(g)?;
    let req = pb::ListPipelinesRequest {
        consistency: consistency(g),
    };
    let resp = c
        .call(|ch| async move { pipelines(ch).list_pipelines(req).await })
        .await
        .map_err(status_err)?
        .into_inner();
    note_stale(g, &resp.meta);
    let v = Value::Array(resp.pipelines.iter().map(pipeline_json).collect());
    print(g.output, &v, |wide| pipeline_rows(&resp.pipelines, wide))
}

pub async fn get_pipeline(g: &Global, name: &str) -> anyhow::Result<()> {
    let resp = fetch_pipeline(g, name).await?;
    note_stale(g, &resp.meta);
    let p = resp.pipeline.unwrap_or_default();
    print(g.output, &pipeline_json(&p), |wide| {
        pipeline_rows(std::slice::from_ref(&p), wide)
    })
}

pub async fn delete_pipeline(g: &Global, name: &str) -> anyhow::Result<()> {
    let c = client(g)?;
    let req = pb::DeletePipelineRequest {
        name: name.to_owned(),
    };
    c.call(|ch| {
        let req = req.clone();
        async move { pipelines(ch).delete_pipeline(req).await }
    })
    .await
    .map_err(status_err)?;
    println!("pipeline/{name} deleted");
    Ok(())
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

fn member_json(m: &pb::Member) -> Value {
    json!({
        "id": m.id,
        "addr": m.addr,
        "peer_addr": m.peer_addr,
        "role": role_name(m.role),
        "voter": m.voter,
        "term": m.term,
        "leader_id": m.leader_id,
        "commit_index": m.commit_index,
        "applied_index": m.applied_index,
        "last_log_index": m.last_log_index,
    })
}

fn member_rows(ms: &[pb::Member], wide: bool) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "ID", "ADDRESS", "ROLE", "VOTER", "TERM", "LEADER", "COMMIT", "APPLIED",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    if wide {
        rows[0].push("LAST LOG".into());
        rows[0].push("PEER ADDRESS".into());
    }
    for m in ms {
        let reachable = m.role != pb::MemberRole::Unreachable as i32;
        let num = |v: u64| if reachable { v.to_string() } else { "-".into() };
        let mut r = vec![
            m.id.to_string(),
            m.addr.clone(),
            role_name(m.role).into(),
            if m.voter { "yes" } else { "no" }.into(),
            num(m.term),
            num(m.leader_id),
            num(m.commit_index),
            num(m.applied_index),
        ];
        if wide {
            r.push(num(m.last_log_index));
            r.push(m.peer_addr.clone());
        }
        rows.push(r);
    }
    rows
}

pub async fn cluster_status(g: &Global) -> anyhow::Result<()> {
    let c = client(g)?;
    let resp = c
        .call(|ch| async move { clusters(ch).status(pb::ClusterStatusRequest {}).await })
        .await
        .map_err(status_err)?
        .into_inner();
    let v = json!({
        "cluster_id": resp.cluster_id,
        "leader_id": resp.leader_id,
        "term": resp.term,
        "served_by": resp.served_by,
        "members": resp.members.iter().map(member_json).collect::<Vec<_>>(),
    });
    if matches!(g.output, Format::Table | Format::Wide) {
        println!(
            "cluster {}  leader {}  term {}",
            resp.cluster_id, resp.leader_id, resp.term
        );
    }
    print(g.output, &v, |wide| member_rows(&resp.members, wide))
}

pub async fn cluster_members(g: &Global) -> anyhow::Result<()> {
    let c = client(g)?;
    let resp = c
        .call(|ch| async move { clusters(ch).members(pb::ClusterMembersRequest {}).await })
        .await
        .map_err(status_err)?
        .into_inner();
    let v = Value::Array(resp.members.iter().map(member_json).collect());
    print(g.output, &v, |wide| member_rows(&resp.members, wide))
}

pub async fn cluster_remove(g: &Global, node_id: u64) -> anyhow::Result<()> {
    let c = client(g)?;
    c.call(|ch| async move {
        clusters(ch)
            .remove_member(pb::RemoveMemberRequest { node_id })
            .await
    })
    .await
    .map_err(status_err)?;
    println!("node {node_id} removed");
    Ok(())
}

pub async fn cluster_transfer(g: &Global, node_id: u64) -> anyhow::Result<()> {
    let c = client(g)?;
    let resp = c
        .call(|ch| async move {
            clusters(ch)
                .transfer_leader(pb::TransferLeaderRequest { node_id })
                .await
        })
        .await
        .map_err(status_err)?
        .into_inner();
    println!("leader is now node {}", resp.leader_id);
    Ok(())
}

/// Filters of `flowctl list` / `get components`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ComponentFilter {
    /// Only this type: source, processor, sink or pipeline.
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Only this status: healthy or unhealthy.
    #[arg(long)]
    pub status: Option<String>,
    /// Only components of this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Print again every 2 seconds until interrupted.
    #[arg(long, short = 'w')]
    pub watch: bool,
}

fn components_client(ch: AuthChannel) -> ComponentServiceClient<AuthChannel> {
    ComponentServiceClient::new(ch).max_decoding_message_size(MAX_REPLY_BYTES)
}

fn component_json(c: &pb::Component) -> Value {
    let sorted = |m: &std::collections::HashMap<String, String>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    json!({
        "id": c.id,
        "name": c.name,
        "type": c.r#type,
        "pipeline": c.pipeline,
        "status": c.status,
        "reported_status": c.reported_status,
        "last_heartbeat": c.last_heartbeat.as_ref().map(|_| rfc3339(ts_ms(&c.last_heartbeat))),
        "metrics": sorted(&c.metrics),
        "input_event_types": c.input_event_types,
        "output_event_types": c.output_event_types,
        "endpoint": if c.endpoint.is_empty() { &c.health_endpoint } else { &c.endpoint },
        "metadata": sorted(&c.metadata),
        "registered_at": rfc3339(ts_ms(&c.registered_at)),
        "api": c.api,
        "version": c.version,
    })
}

fn component_rows(cs: &[pb::Component], wide: bool) -> Vec<Vec<String>> {
    let now = now_ms();
    let mut header = vec![
        "ID",
        "TYPE",
        "PIPELINE",
        "STATUS",
        "LAST HEARTBEAT",
        "ENDPOINT",
        "INPUT",
        "OUTPUT",
    ];
    if wide {
        header.extend(["API", "VERSION", "REGISTERED"]);
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    for c in cs {
        // The reported status is shown only where it adds something ("healthy (degraded)").
        let status = if c.reported_status.is_empty()
            || c.status == "unhealthy"
            || c.reported_status.eq_ignore_ascii_case(&c.status)
        {
            c.status.clone()
        } else {
            format!("{} ({})", c.status, c.reported_status.to_lowercase())
        };
        let mut r = vec![
            c.id.clone(),
            c.r#type.clone(),
            dash(&c.pipeline),
            status,
            c.last_heartbeat
                .as_ref()
                .map(|_| format!("{} ago", age(ts_ms(&c.last_heartbeat), now)))
                .unwrap_or_else(|| "-".into()),
            dash(if c.endpoint.is_empty() {
                &c.health_endpoint
            } else {
                &c.endpoint
            }),
            dash(&c.input_event_types.join(",")),
            dash(&c.output_event_types.join(",")),
        ];
        if wide {
            r.extend([
                c.api.clone(),
                dash(&c.version),
                rfc3339(ts_ms(&c.registered_at)),
            ]);
        }
        rows.push(r);
    }
    rows
}

pub async fn list_components(g: &Global, f: &ComponentFilter) -> anyhow::Result<()> {
    if let Some(t) = &f.kind {
        if !["source", "processor", "sink", "pipeline", "unspecified"].contains(&t.as_str()) {
            anyhow::bail!("--type {t:?} must be one of source, processor, sink, pipeline");
        }
    }
    if let Some(s) = &f.status {
        if !["healthy", "unhealthy"].contains(&s.as_str()) {
            anyhow::bail!("--status {s:?} must be healthy or unhealthy");
        }
    }
    let c = client(g)?;
    loop {
        let req = pb::ListComponentsRequest {
            consistency: consistency(g),
        };
        let resp = c
            .call(|ch| async move { components_client(ch).list_components(req).await })
            .await
            .map_err(status_err)?
            .into_inner();
        note_stale(g, &resp.meta);
        let shown: Vec<pb::Component> = resp
            .components
            .into_iter()
            .filter(|x| f.kind.as_ref().is_none_or(|k| &x.r#type == k))
            .filter(|x| f.status.as_ref().is_none_or(|s| &x.status == s))
            .filter(|x| f.pipeline.as_ref().is_none_or(|p| &x.pipeline == p))
            .collect();
        let v = Value::Array(shown.iter().map(component_json).collect());
        print(g.output, &v, |wide| component_rows(&shown, wide))?;
        if !f.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!();
    }
}

pub async fn describe_component(g: &Global, id: &str) -> anyhow::Result<()> {
    let c = client(g)?;
    let req = pb::GetComponentRequest { id: id.to_owned() };
    let comp = c
        .call(|ch| {
            let req = req.clone();
            async move { components_client(ch).get_component(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let v = component_json(&comp);
    match g.output {
        Format::Table | Format::Wide => print!("{}", serde_saphyr::to_string(&v)?),
        f => print(f, &v, |_| vec![])?,
    }
    Ok(())
}

/// Arguments of `flowctl logs`.
#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// The component id.
    pub component: String,
    /// Only this pipeline's instances.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Keep streaming new output.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines of each instance (0 = all).
    #[arg(long, default_value_t = 0)]
    pub tail: u32,
    /// The output of the run before the last restart.
    #[arg(long)]
    pub previous: bool,
    /// Only output written in this recent period, such as 30s, 10m or 2h.
    #[arg(long)]
    pub since: Option<String>,
    /// Show when each line was written.
    #[arg(long)]
    pub timestamps: bool,
}

/// Parses `--since`: `30s`, `10m`, `2h` or `1d`.
pub(crate) fn parse_since(s: &str) -> anyhow::Result<Duration> {
    parse_duration("--since", s)
}

/// Parses a duration flag's `30s`, `10m`, `2h` or `1d`; errors name `flag`.
pub(crate) fn parse_duration(flag: &str, s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} {s:?}: expected a number with s, m, h or d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("{flag} {s:?}: the unit must be s, m, h or d"),
    };
    let secs = n
        .checked_mul(scale)
        .ok_or_else(|| anyhow::anyhow!("{flag} {s:?}: too large"))?;
    Ok(Duration::from_secs(secs))
}

pub async fn logs(g: &Global, a: &LogsArgs) -> anyhow::Result<()> {
    use flowctl_client::proto::admin::v1::log_service_client::LogServiceClient;
    let c = client(g)?;
    let req = pb::LogsRequest {
        component: a.component.clone(),
        pipeline: a.pipeline.clone().unwrap_or_default(),
        follow: a.follow,
        tail: a.tail,
        previous: a.previous,
        local_only: false,
        instance: String::new(),
        since_ms: match &a.since {
            Some(s) => now_ms().saturating_sub(parse_since(s)?.as_millis() as u64),
            None => 0,
        },
        timestamps: a.timestamps,
    };
    // Only opening the stream is retried across endpoints; a stream is not resumed.
    let mut stream = c
        .call(|ch| {
            let req = req.clone();
            async move { LogServiceClient::new(ch).logs(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    while let Some(item) = stream.message().await.transpose() {
        let line = item.map_err(status_err)?;
        println!("[{}] {}", line.instance, line.line);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_durations_parse() {
        assert_eq!(parse_since("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_since("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_since("ten").is_err());
        assert!(parse_since("5y").is_err());
    }

    #[test]
    fn duration_errors_name_their_flag() {
        assert_eq!(
            parse_duration("--ttl", "90d").unwrap().as_secs(),
            90 * 86400
        );
        let e = parse_duration("--ttl", "1w").unwrap_err().to_string();
        assert!(e.starts_with("--ttl \"1w\""), "{e}");
        assert!(parse_duration("--ttl", "99999999999999999d").is_err());
    }

    #[test]
    fn auth_failures_read_as_one_line_with_a_hint() {
        let e = status_err(tonic::Status::unauthenticated("token expired"));
        assert_eq!(
            e.to_string(),
            "not authenticated: token expired (give a token with --token, --token-file or FLOWCTL_TOKEN)"
        );
        let e = status_err(tonic::Status::permission_denied(
            "role reader may not apply pipelines;\nan operator role is needed",
        ));
        assert_eq!(
            e.to_string(),
            "permission denied: role reader may not apply pipelines; an operator role is needed"
        );
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }
}
