//! Shared helpers: the request timeout, queue-and-wait, backoff jitter, `host:port` parsing.

use crate::{Error, PROPOSAL_QUEUE};
use std::time::Duration;

/// How long a write or read may wait for Raft before the caller gets `Unavailable`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Queues a request built around a reply channel on `queue` and waits for the reply: the
/// pattern of the batcher, the forwarder and the read-index task. A full queue is
/// `Overloaded`; a stopped task is `Fatal`.
pub(crate) async fn enqueue_and_wait<T, R>(
    queue: &tokio::sync::mpsc::Sender<T>,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<R, Error>>) -> T,
    what: &str,
    task: &str,
) -> Result<R, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    queue.try_send(make(tx)).map_err(|e| match e {
        tokio::sync::mpsc::error::TrySendError::Full(_) => Error::Overloaded(format!(
            "more than {PROPOSAL_QUEUE} {what} are waiting; retry later"
        )),
        tokio::sync::mpsc::error::TrySendError::Closed(_) => {
            Error::Fatal(format!("the {task} stopped"))
        }
    })?;
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Err(_) => Err(Error::Unavailable(format!(
            "timed out waiting for the {task}"
        ))),
        Ok(Err(_)) => Err(Error::Fatal(format!("the {task} stopped"))),
        Ok(Ok(r)) => r,
    }
}

pub use flowctl_proto::retry::jitter;

/// Splits `host:port` (a name, an IPv4 address or a bracketed IPv6 address, and a non-zero
/// port); `None` if `addr` is not of that form.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && host.chars().all(plain)
    };
    ok.then_some((host, port))
}

#[cfg(test)]
mod address_tests {
    use super::split_host_port;

    #[test]
    fn host_port_is_a_name_or_address_and_a_non_zero_port() {
        assert_eq!(split_host_port("127.0.0.1:8081"), Some(("127.0.0.1", 8081)));
        assert_eq!(
            split_host_port("node-1.example:1"),
            Some(("node-1.example", 1))
        );
        assert_eq!(split_host_port("[::1]:8081"), Some(("[::1]", 8081)));
        for bad in [
            "", "h", ":1", "h:0", "h:65536", "a b:1", "h/x:1", "[zz]:1", "h:x",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad:?}");
        }
    }
}
