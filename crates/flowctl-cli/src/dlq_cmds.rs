//! `flowctl dlq ...`: the dead-letter index.

use crate::commands::{
    client, consistency, note_stale, now_ms, parse_since, rfc3339, status_err, ts_ms,
};
use crate::output::{age, print};
use crate::{Format, Global};
use clap::Subcommand;
use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::dlq_service_client::DlqServiceClient;
use flowctl_client::{AuthChannel, MAX_REPLY_BYTES};
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// Dead letters, oldest first.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        component: Option<String>,
        /// pending, replaying, replayed or discarded.
        #[arg(long)]
        state: Option<String>,
        /// Only entries first seen within this long (e.g. 10m, 2h).
        #[arg(long)]
        since: Option<String>,
    },
    /// One entry with its payload, decoded through the schema registry.
    Show { id: String },
    /// Re-produce payloads onto their original topics.
    Replay(ActionArgs),
    /// Mark entries as not to be replayed.
    Discard(ActionArgs),
}

#[derive(clap::Args, Debug)]
pub struct ActionArgs {
    /// One entry.
    #[arg(long, conflicts_with_all = ["pipeline", "all"], required_unless_present = "all")]
    pub id: Option<String>,
    /// Every pending entry of this pipeline (with --all).
    #[arg(long, requires = "all")]
    pub pipeline: Option<String>,
    #[arg(long, requires = "pipeline")]
    pub all: bool,
}

fn dlq(ch: AuthChannel) -> DlqServiceClient<AuthChannel> {
    DlqServiceClient::new(ch)
        .max_decoding_message_size(MAX_REPLY_BYTES)
        .max_encoding_message_size(MAX_REPLY_BYTES)
}

fn pos(p: &Option<pb::KafkaPosition>) -> Value {
    match p {
        Some(p) => json!({"topic": p.topic, "partition": p.partition, "offset": p.offset}),
        None => Value::Null,
    }
}

fn entry_json(e: &pb::DlqEntry) -> Value {
    json!({
        "id": e.id,
        "pipeline": e.pipeline,
        "component": e.component,
        "error": e.error,
        "event_type": e.event_type,
        "schema_id": e.schema_id,
        "key": e.key,
        "source": pos(&e.source),
        "dlq": pos(&e.dlq),
        "first_seen": rfc3339(ts_ms(&e.first_seen)),
        "attempts": e.attempts,
        "state": e.state,
        "updated_at": rfc3339(ts_ms(&e.updated_at)),
    })
}

pub async fn run(g: &Global, cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::Ls {
            pipeline,
            component,
            state,
            since,
        } => {
            let since_ms = match since {
                Some(s) => now_ms().saturating_sub(parse_since(&s)?.as_millis() as u64),
                None => 0,
            };
            let req = pb::ListDlqRequest {
                pipeline: pipeline.unwrap_or_default(),
                component: component.unwrap_or_default(),
                state: state.unwrap_or_default(),
                since_ms,
                consistency: consistency(g),
            };
            let resp = client(g)?
                .call(|ch| {
                    let req = req.clone();
                    async move { dlq(ch).list(req).await }
                })
                .await
                .map_err(status_err)?
                .into_inner();
            note_stale(g, &resp.meta);
            let v = Value::Array(resp.entries.iter().map(entry_json).collect());
            let now = now_ms();
            print(g.output, &v, |wide| {
                let mut head = vec![
                    "ID",
                    "PIPELINE",
                    "COMPONENT",
                    "STATE",
                    "ATTEMPTS",
                    "KEY",
                    "AGE",
                    "ERROR",
                ];
                if wide {
                    head.extend(["EVENT TYPE", "SOURCE", "DLQ"]);
                }
                let mut rows = vec![head.into_iter().map(str::to_owned).collect::<Vec<_>>()];
                for e in &resp.entries {
                    let mut error = e.error.replace('\n', " ");
                    if !wide && error.chars().count() > 60 {
                        error = error.chars().take(57).collect::<String>() + "...";
                    }
                    let mut row = vec![
                        e.id.clone(),
                        e.pipeline.clone(),
                        e.component.clone(),
                        e.state.clone(),
                        e.attempts.to_string(),
                        e.key.clone(),
                        age(ts_ms(&e.first_seen), now),
                        error,
                    ];
                    if wide {
                        let p = |p: &Option<pb::KafkaPosition>| {
                            p.as_ref()
                                .map(|p| format!("{}/{}@{}", p.topic, p.partition, p.offset))
                                .unwrap_or_default()
                        };
                        row.push(e.event_type.clone());
                        row.push(p(&e.source));
                        row.push(p(&e.dlq));
                    }
                    rows.push(row);
                }
                rows
            })
        }
        DlqCmd::Show { id } => {
            let req = pb::ShowDlqRequest { id };
            let resp = client(g)?
                .call(|ch| {
                    let req = req.clone();
                    async move { dlq(ch).show(req).await }
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let e = resp.entry.unwrap_or_default();
            let payload: Value = if resp.payload_json.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&resp.payload_json).unwrap_or(Value::Null)
            };
            let mut v = entry_json(&e);
            v["payload"] = payload.clone();
            v["payload_bytes"] = json!(resp.payload.len());
            v["decode_error"] = json!(resp.decode_error);
            v["headers"] = json!(resp.headers);
            match g.output {
                Format::Table | Format::Wide => {
                    for (k, val) in entry_json(&e).as_object().into_iter().flatten() {
                        let text = match val {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        println!("{:<12} {text}", format!("{k}:"));
                    }
                    println!("payload:     {} bytes", resp.payload.len());
                    if payload.is_null() {
                        println!("  (not decoded: {})", resp.decode_error);
                    } else {
                        for l in serde_json::to_string_pretty(&payload)?.lines() {
                            println!("  {l}");
                        }
                    }
                    Ok(())
                }
                f => print(f, &v, |_| Vec::new()),
            }
        }
        DlqCmd::Replay(a) => action(g, a, true).await,
        DlqCmd::Discard(a) => action(g, a, false).await,
    }
}

async fn action(g: &Global, a: ActionArgs, replay: bool) -> anyhow::Result<()> {
    let req = pb::DlqActionRequest {
        id: a.id.unwrap_or_default(),
        pipeline: a.pipeline.unwrap_or_default(),
        all: a.all,
    };
    let c = client(g)?;
    let resp = c
        .call(|ch| {
            let req = req.clone();
            async move {
                if replay {
                    dlq(ch).replay(req).await
                } else {
                    dlq(ch).discard(req).await
                }
            }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let v = Value::Array(
        resp.results
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "result": r.result,
                    "message": r.message,
                    "written": pos(&r.written),
                })
            })
            .collect(),
    );
    print(g.output, &v, |_| {
        let mut rows = vec![vec![
            "ID".to_owned(),
            "RESULT".to_owned(),
            "DETAIL".to_owned(),
        ]];
        for r in &resp.results {
            let detail = match &r.written {
                Some(w) if r.message.is_empty() => {
                    format!("written to {}/{}@{}", w.topic, w.partition, w.offset)
                }
                _ => r.message.clone(),
            };
            rows.push(vec![r.id.clone(), r.result.clone(), detail]);
        }
        rows
    })?;
    let failed = resp.results.iter().filter(|r| r.result == "failed").count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} entries failed", resp.results.len());
    }
    Ok(())
}
