//! `flowctl logs`: instance output streamed from whichever node runs the instance.
//!
//! ```text
//! client ─▶ any node: find placements ─┬─ local instance  → read its log file
//!                                      └─ remote instance → Logs(local_only) on that node
//! ```

use crate::deploy::log_path;
use flowctl_proto::admin::v1 as pb;
use flowctl_proto::admin::v1::log_service_client::LogServiceClient;
use flowctl_raft::RaftNode;
use flowctl_state::NodeId;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Lines buffered towards one client before the file readers wait.
const STREAM_BUFFER: usize = 256;
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct LogApi {
    pub node: RaftNode,
    pub data_dir: PathBuf,
}

type LineStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl pb::log_service_server::LogService for LogApi {
    type LogsStream = LineStream;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        if req.component.is_empty() {
            return Err(Status::invalid_argument("a component id is required"));
        }
        let me = NodeId(self.node.id());
        let placed: Vec<(String, String, NodeId)> = self
            .node
            .read_stale(|s| {
                s.placements
                    .iter()
                    .filter(|(p, _)| req.pipeline.is_empty() || **p == req.pipeline)
                    .flat_map(|(p, pl)| {
                        pl.instances
                            .iter()
                            .filter(|(k, _)| {
                                k.rsplit_once('/').is_some_and(|(c, _)| c == req.component)
                            })
                            .filter(|(k, _)| req.instance.is_empty() || **k == req.instance)
                            .map(move |(k, n)| (p.clone(), k.clone(), *n))
                    })
                    .collect()
            })
            .0;
        if placed.is_empty() {
            return Err(Status::not_found(format!(
                "component {:?} has no placed instance{}",
                req.component,
                if req.pipeline.is_empty() {
                    String::new()
                } else {
                    format!(" in pipeline {:?}", req.pipeline)
                }
            )));
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let nodes = self.node.status().nodes;
        for (pipeline, key, n) in placed {
            let tx = tx.clone();
            let label = format!("{pipeline}/{key}");
            if n == me {
                let path = log_path(&self.data_dir, &pipeline, &key);
                let path = if req.previous {
                    path.with_extension("prev.log")
                } else {
                    path
                };
                tokio::spawn(stream_file(path, label, req.tail, req.follow, tx));
            } else if !req.local_only {
                let Some(addr) = nodes.get(&n.0).cloned() else {
                    continue;
                };
                let sub = pb::LogsRequest {
                    pipeline: pipeline.clone(),
                    instance: key.clone(),
                    local_only: true,
                    ..req.clone()
                };
                tokio::spawn(proxy(addr, sub, tx));
            }
        }
        drop(tx);
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as LineStream
        ))
    }
}

async fn proxy(addr: String, req: pb::LogsRequest, tx: mpsc::Sender<Result<pb::LogLine, Status>>) {
    let ch = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(ep) => ep.connect_timeout(Duration::from_secs(2)).connect_lazy(),
        Err(e) => {
            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
            return;
        }
    };
    match LogServiceClient::new(ch).logs(req).await {
        Ok(resp) => {
            let mut s = resp.into_inner();
            while let Some(item) = s.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }
        Err(s) => {
            let _ = tx
                .send(Err(Status::unavailable(format!(
                    "node {addr}: {}",
                    s.message()
                ))))
                .await;
        }
    }
}

/// Sends the last `tail` lines (0 = all) of `path`, then, when following, new lines as they
/// are written (starting over when the file is rotated).
async fn stream_file(
    path: PathBuf,
    label: String,
    tail: u32,
    follow: bool,
    tx: mpsc::Sender<Result<pb::LogLine, Status>>,
) {
    let send = |line: String| {
        let tx = tx.clone();
        let label = label.clone();
        async move {
            tx.send(Ok(pb::LogLine {
                instance: label,
                line,
            }))
            .await
            .is_ok()
        }
    };
    let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let mut offset = text.len() as u64;
    let lines: Vec<&str> = text.lines().collect();
    let start = if tail == 0 {
        0
    } else {
        lines.len().saturating_sub(tail as usize)
    };
    for l in &lines[start..] {
        if !send((*l).to_owned()).await {
            return;
        }
    }
    if !follow {
        return;
    }
    let mut partial = String::new();
    loop {
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
        let Ok(mut f) = tokio::fs::File::open(&path).await else {
            continue;
        };
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Rotated or restarted: read the new file from the start.
            offset = 0;
            partial.clear();
        }
        if len == offset {
            continue;
        }
        if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).await.is_err() {
            continue;
        }
        offset += buf.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            if !send(line.trim_end_matches('\n').to_owned()).await {
                return;
            }
        }
    }
}
