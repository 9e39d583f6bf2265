//! A typed flowctl client: a list of endpoints, failover to the next endpoint when one is
//! down, and retries with exponential backoff, jitter and an overall deadline.
//!
//! It is not a cache or a leader tracker: any node serves any request (followers forward
//! writes), so the client only needs one node that answers.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use flowctl_proto as proto;

/// The default endpoint, as in the original control plane.
pub const DEFAULT_ENDPOINT: &str = "localhost:8080";
/// Largest reply the client accepts (large pipeline lists).
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// How often an idle connection is pinged, and how long a ping may go unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {endpoint:?}: {message}")]
    BadEndpoint { endpoint: String, message: String },
}

/// A client for a flowctl cluster.
pub struct Client {
    endpoints: Vec<(String, Channel)>,
    preferred: AtomicUsize,
    deadline: Duration,
    last_used: Mutex<Option<String>>,
}

/// Splits a comma list of `host:port` endpoints.
pub fn parse_endpoints(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Client {
    /// Builds a client. `deadline` bounds each call including its retries.
    pub fn new(endpoints: &[String], deadline: Duration) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let mut out = Vec::new();
        for e in endpoints {
            let uri = if e.starts_with("http://") || e.starts_with("https://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let ep = Endpoint::from_shared(uri).map_err(|err| Error::BadEndpoint {
                endpoint: e.clone(),
                message: err.to_string(),
            })?;
            // HTTP/2 pings find a peer that vanished without closing the connection (a
            // partition, a host crash), so long streams (chunk commands, `logs --follow`) fail
            // over instead of hanging.
            let ch = ep
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .connect_lazy();
            out.push((e.clone(), ch));
        }
        Ok(Client {
            endpoints: out,
            preferred: AtomicUsize::new(0),
            deadline,
            last_used: Mutex::new(None),
        })
    }

    /// The endpoint that answered the last call.
    pub fn last_endpoint(&self) -> Option<String> {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` against one endpoint after another until one answers. `UNAVAILABLE` (node down,
    /// no leader yet, leadership moving) moves on to the next endpoint; after a full round the
    /// client backs off with jitter. Any other status is returned at once.
    pub async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let until = Instant::now() + self.deadline;
        let n = self.endpoints.len();
        let mut backoff = FIRST_BACKOFF;
        let mut tried = 0usize;
        loop {
            let i = self.preferred.load(Ordering::Relaxed) % n;
            let (name, ch) = &self.endpoints[i];
            let left = until.saturating_duration_since(Instant::now());
            let result =
                tokio::time::timeout(left.max(Duration::from_millis(1)), f(ch.clone())).await;
            let status = match result {
                Ok(Ok(v)) => {
                    *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.clone());
                    return Ok(v);
                }
                Ok(Err(s)) if retryable(&s) => s,
                Ok(Err(s)) => return Err(s),
                Err(_) => {
                    Status::deadline_exceeded(format!("no answer from {name} within the deadline"))
                }
            };
            self.preferred.store((i + 1) % n, Ordering::Relaxed);
            tried += 1;
            if Instant::now() >= until {
                return Err(annotate(status, name));
            }
            if tried.is_multiple_of(n) {
                let sleep = jitter(backoff).min(until.saturating_duration_since(Instant::now()));
                tokio::time::sleep(sleep).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable)
}

fn annotate(s: Status, endpoint: &str) -> Status {
    Status::new(s.code(), format!("{endpoint}: {}", s.message()))
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_split_and_trimmed() {
        assert_eq!(parse_endpoints(" a:1, b:2,,"), vec!["a:1", "b:2"]);
    }

    #[tokio::test]
    async fn fails_over_to_the_next_endpoint() {
        let c = Client::new(&["a:1".into(), "b:2".into()], Duration::from_secs(5)).unwrap();
        let mut calls = Vec::new();
        let r = c
            .call(|_ch| {
                calls.push(c.preferred.load(Ordering::Relaxed));
                let n = calls.len();
                async move {
                    if n == 1 {
                        Err(Status::unavailable("down"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(r, 2);
        assert_eq!(calls, [0, 1]);
        assert_eq!(c.last_endpoint().as_deref(), Some("b:2"));
    }

    #[tokio::test]
    async fn non_retryable_errors_return_at_once() {
        let c = Client::new(&["a:1".into()], Duration::from_secs(5)).unwrap();
        let mut n = 0;
        let r: Result<(), _> = c
            .call(|_| {
                n += 1;
                async { Err(Status::invalid_argument("bad")) }
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let c = Client::new(&["a:1".into()], Duration::from_millis(300)).unwrap();
        let r: Result<(), _> = c.call(|_| async { Err(Status::unavailable("down")) }).await;
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().starts_with("a:1: "), "{}", e.message());
    }
}
