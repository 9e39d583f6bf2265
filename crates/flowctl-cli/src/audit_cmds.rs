//! `flowctl audit ls`: the cluster's record of accepted writes (admin only).

use crate::commands::{client, now_ms, parse_since, rfc3339, status_err, ts_ms};
use crate::output::print;
use crate::Global;
use clap::Subcommand;
use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::audit_service_client::AuditServiceClient;
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Accepted writes, oldest first: when, who, which method, through which node.
    #[command(alias = "list")]
    Ls {
        /// Only records this recent, such as 30m or 1h.
        #[arg(long)]
        since: Option<String>,
        /// Only this caller's records: a token name, component:<id>, peer or anonymous.
        #[arg(long)]
        user: Option<String>,
        /// At most this many, the newest (default 1000, at most 10000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

pub async fn run(g: &Global, cmd: AuditCmd) -> anyhow::Result<()> {
    let AuditCmd::Ls { since, user, limit } = cmd;
    let since = match since {
        Some(s) => {
            let ms = now_ms().saturating_sub(parse_since(&s)?.as_millis() as u64);
            Some(prost_types::Timestamp {
                seconds: (ms / 1000) as i64,
                nanos: 0,
            })
        }
        None => None,
    };
    let req = pb::ListAuditRequest {
        since,
        who: user.unwrap_or_default(),
        limit,
    };
    let resp = client(g)?
        .call(|ch| {
            let req = req.clone();
            async move { AuditServiceClient::new(ch).list(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let v = Value::Array(
        resp.records
            .iter()
            .map(|r| {
                json!({
                    "seq": r.seq,
                    "time": rfc3339(ts_ms(&r.time)),
                    "who": r.who,
                    "method": r.method,
                    "resource": r.resource,
                    "node_id": r.node_id,
                })
            })
            .collect(),
    );
    print(g.output, &v, |_| {
        let mut rows = vec![["SEQ", "TIME", "WHO", "METHOD", "RESOURCE", "NODE"]
            .map(String::from)
            .to_vec()];
        rows.extend(resp.records.iter().map(|r| {
            vec![
                r.seq.to_string(),
                rfc3339(ts_ms(&r.time)),
                r.who.clone(),
                r.method.trim_start_matches('/').to_owned(),
                r.resource.clone(),
                r.node_id.to_string(),
            ]
        }));
        rows
    })
}
