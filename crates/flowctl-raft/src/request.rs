//! Request ids, so that a retried write answers what its first copy answered.
//!
//! [`RaftNode::propose`](crate::RaftNode::propose) wraps a write in
//! [`Command::Once`] with an id that stays the same when the write is sent again:
//! - inside [`with_request_id`] (the server runs each client request in one, named after the
//!   caller and the id the client sent), the writes a request proposes are `BASE/0`, `BASE/1`, …
//!   in the order it proposes them, so the client's retry of the request names them the same;
//! - elsewhere, a fresh id that lasts for the retries of that one `propose` call.
//!
//! The leader's own periodic decisions (liveness, placements, the DLQ index, chunk
//! assignment, audit records, runtime reports) are decided again on every sweep and are
//! idempotent, so they are not wrapped and cost the table nothing.

use flowctl_state::requests::{Once, RequestId};
use flowctl_state::Command;
use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static SCOPE: Scope;
}

struct Scope {
    base: String,
    next: Cell<u32>,
}

/// Runs `f` with the writes it proposes named after `base` (see the module's doc).
pub async fn with_request_id<F: Future>(base: String, f: F) -> F::Output {
    SCOPE
        .scope(
            Scope {
                base,
                next: Cell::new(0),
            },
            f,
        )
        .await
}

/// Whether a write is worth remembering: a write whose second copy could answer differently.
fn remembered(cmd: &Command) -> bool {
    // A leader's own decisions are idempotent and periodic; audit records and runtime
    // reports too.
    !(crate::write::leader_only(cmd)
        || matches!(
            cmd,
            Command::Once(_) | Command::RecordAudit(_) | Command::ReportRuntime(_)
        ))
}

/// `cmd` wrapped in [`Command::Once`] when it is worth remembering.
pub(crate) fn once(node_id: u64, cmd: Command) -> Command {
    if !remembered(&cmd) {
        return cmd;
    }
    let id = SCOPE
        .try_with(|s| {
            let n = s.next.get();
            s.next.set(n.wrapping_add(1));
            format!("{}/{n}", s.base)
        })
        .unwrap_or_else(|_| format!("node-{node_id:x}/{:016x}", rand::random::<u64>()));
    Command::Once(Once {
        request_id: RequestId(id),
        command: Box::new(cmd),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowctl_state::pipelines::DeletePipeline;

    fn del() -> Command {
        Command::DeletePipeline(DeletePipeline { name: "p".into() })
    }

    fn id_of(c: &Command) -> String {
        match c {
            Command::Once(o) => o.request_id.0.clone(),
            other => panic!("not wrapped: {other:?}"),
        }
    }

    #[tokio::test]
    async fn writes_of_one_request_are_numbered_in_order_and_a_retry_numbers_them_alike() {
        let ids = || async { [id_of(&once(1, del())), id_of(&once(1, del()))] };
        let first = with_request_id("alice/r1".into(), ids()).await;
        let retry = with_request_id("alice/r1".into(), ids()).await;
        assert_eq!(first, ["alice/r1/0", "alice/r1/1"]);
        assert_eq!(first, retry);
    }

    #[tokio::test]
    async fn outside_a_request_each_write_gets_a_fresh_id() {
        assert_ne!(id_of(&once(1, del())), id_of(&once(1, del())));
    }

    #[test]
    fn the_leaders_own_decisions_are_not_wrapped() {
        let c = Command::RecordNodeRemoved {
            node_id: flowctl_state::NodeId(3),
        };
        assert!(matches!(once(1, c), Command::Once(_)));
        let c = Command::ExpireDlq(flowctl_state::dlq::ExpireDlq { before_ms: 1 });
        assert!(!matches!(once(1, c), Command::Once(_)));
    }
}
