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
        let nodes = self.node.status().peers;
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
                let filter = LineFilter {
                    since_ms: req.since_ms,
                    timestamps: req.timestamps,
                };
                tokio::spawn(stream_file(path, label, req.tail, req.follow, filter, tx));
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
                tokio::spawn(proxy(self.node.peers().clone(), addr, sub, tx));
            }
        }
        drop(tx);
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as LineStream
        ))
    }
}

async fn proxy(
    peers: flowctl_raft::Peers,
    addr: String,
    req: pb::LogsRequest,
    tx: mpsc::Sender<Result<pb::LogLine, Status>>,
) {
    let ch = match peers.channel(&addr) {
        Ok(ch) => ch,
        Err(e) => {
            let _ = tx.send(Err(Status::internal(e))).await;
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

/// `--since` and `--timestamps`: each stored line starts with its write time in Unix
/// milliseconds and a space.
#[derive(Clone, Copy)]
struct LineFilter {
    since_ms: u64,
    timestamps: bool,
}

impl LineFilter {
    /// The line to show, or `None` when it is older than `since`.
    fn apply(&self, stored: &str) -> Option<String> {
        let (ts, text) = match stored.split_once(' ') {
            Some((t, rest)) if t.len() == 13 && t.bytes().all(|b| b.is_ascii_digit()) => {
                (t.parse::<u64>().unwrap_or(0), rest)
            }
            _ => (0, stored),
        };
        if self.since_ms > 0 && ts < self.since_ms {
            return None;
        }
        Some(if self.timestamps {
            format!("{} {text}", rfc3339_ms(ts))
        } else {
            text.to_owned()
        })
    }
}

/// `2023-11-14T22:13:20.600Z` (UTC, milliseconds); the one timestamp formatter of the
/// project, also used by the CLI.
pub fn rfc3339_ms(ms: u64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), UTC.
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60,
        ms % 1000
    )
}

/// Sends the last `tail` lines (0 = all) of `path`, then, when following, new lines as they
/// are written (starting over when the file is rotated).
async fn stream_file(
    path: PathBuf,
    label: String,
    tail: u32,
    follow: bool,
    filter: LineFilter,
    tx: mpsc::Sender<Result<pb::LogLine, Status>>,
) {
    let send = |stored: String| {
        let tx = tx.clone();
        let label = label.clone();
        async move {
            match filter.apply(&stored) {
                Some(line) => tx
                    .send(Ok(pb::LogLine {
                        instance: label,
                        line,
                    }))
                    .await
                    .is_ok(),
                None => true,
            }
        }
    };
    let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let mut offset = text.len() as u64;
    let lines: Vec<&str> = text.lines().filter(|l| filter.apply(l).is_some()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_filters_by_the_stored_write_time_and_timestamps_show_it() {
        let f = LineFilter {
            since_ms: 1_700_000_000_500,
            timestamps: false,
        };
        assert_eq!(f.apply("1700000000000 old"), None);
        assert_eq!(f.apply("1700000000600 new").as_deref(), Some("new"));
        let t = LineFilter {
            since_ms: 0,
            timestamps: true,
        };
        assert_eq!(
            t.apply("1700000000600 new").as_deref(),
            Some("2023-11-14T22:13:20.600Z new")
        );
        // Lines without a stored time (written by an older release) are shown as they are.
        assert_eq!(
            t.apply("plain").as_deref(),
            Some("1970-01-01T00:00:00.000Z plain")
        );
    }
}
