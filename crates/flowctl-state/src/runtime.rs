//! What the supervisors report about the instances they run: each instance's state, restart
//! count and spec, and a bounded list of recent events per pipeline. `flowctl describe
//! pipeline` reads it from any node, and supervisors read it to roll a changed component one
//! replica at a time across nodes.

use crate::{NodeId, Outcome, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Events kept per pipeline; older ones are dropped first.
pub const MAX_EVENTS_PER_PIPELINE: usize = 64;

/// The runtime view of one pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineRuntime {
    /// By instance key (`component/replica`).
    pub instances: BTreeMap<String, InstanceStatus>,
    /// Oldest first, at most [`MAX_EVENTS_PER_PIPELINE`].
    pub events: VecDeque<RuntimeEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Running,
    /// Exited; waiting for its restart.
    Backoff,
    /// Exited and not restarted (restart policy).
    Exited,
    /// The program could not be started.
    StartFailed,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Running => "running",
            InstanceState::Backoff => "backoff",
            InstanceState::Exited => "exited",
            InstanceState::StartFailed => "start_failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The node that runs it.
    pub node: NodeId,
    /// A hash of what the component runs (program, args, shared env, policy); equal across
    /// the replicas of one component version.
    pub spec_hash: String,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub restarts: u32,
    /// When the current (or last) process started.
    pub started_at_ms: u64,
    /// How the last process ended (`exit status: 1`, `signal: 9`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// The placement epoch the copy runs under (`FLOWCTL_EPOCH`); a status from an older
    /// placement of the instance than the current one is refused. Absent in reports from
    /// older releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEvent {
    pub at_ms: u64,
    pub node: NodeId,
    /// The instance key, or empty for pipeline-wide events.
    pub instance: String,
    /// A CamelCase word: Started, Exited, Restarted, Replaced, Stopped, StartFailed.
    pub reason: String,
    pub message: String,
    /// Errors and crashes, as opposed to normal progress.
    pub warning: bool,
}

/// What one node reports; instances set to `None` no longer run there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRuntime {
    pub node: NodeId,
    pub pipelines: Vec<PipelineReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineReport {
    pub pipeline: String,
    pub instances: Vec<(String, Option<InstanceStatus>)>,
    pub events: Vec<RuntimeEvent>,
}

pub(crate) fn report(state: &mut State, c: &ReportRuntime) -> (Outcome, Vec<Touched>) {
    let mut touched = Vec::new();
    for p in &c.pipelines {
        // Reports about deleted pipelines (a stop racing the delete) are dropped.
        if !state.pipelines.contains_key(&p.pipeline) {
            continue;
        }
        let placed = state.placements.get(&p.pipeline);
        let rt = state.runtime.entry(p.pipeline.clone()).or_default();
        for (key, status) in &p.instances {
            match status {
                // Fenced: a status from a node the instance has been moved away from (a report
                // delayed by a partition, say), or from an older placement of it on this same
                // node (moved away and back), is stale and must not hide the current copy's.
                Some(s)
                    if s.node != c.node
                        || placed
                            .and_then(|pl| pl.instances.get(key))
                            .is_some_and(|n| *n != c.node)
                        || placed.is_some_and(|pl| pl.fences(key, s.epoch)) => {}
                Some(s) => {
                    rt.instances.insert(key.clone(), s.clone());
                }
                // Only the node that runs an instance may clear it: a late report from the
                // node it moved away from must not erase the new node's status.
                None => {
                    if rt.instances.get(key).is_some_and(|s| s.node == c.node) {
                        rt.instances.remove(key);
                    }
                }
            }
        }
        for e in &p.events {
            rt.events.push_back(e.clone());
        }
        while rt.events.len() > MAX_EVENTS_PER_PIPELINE {
            rt.events.pop_front();
        }
        touched.push(Touched::Runtime(p.pipeline.clone()));
    }
    (Outcome::RuntimeReported, touched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::ApplyPipeline;
    use crate::{apply, Command, PipelineId};

    fn status(node: u64, restarts: u32) -> InstanceStatus {
        InstanceStatus {
            node: NodeId(node),
            spec_hash: "h1".into(),
            state: InstanceState::Running,
            pid: Some(42),
            restarts,
            started_at_ms: 1,
            last_exit: None,
            epoch: None,
        }
    }

    fn event(i: u64) -> RuntimeEvent {
        RuntimeEvent {
            at_ms: i,
            node: NodeId(1),
            instance: "a/0".into(),
            reason: "Started".into(),
            message: format!("event {i}"),
            warning: false,
        }
    }

    fn with_pipeline() -> State {
        let mut s = State::default();
        apply(
            &mut s,
            1,
            &Command::ApplyPipeline(ApplyPipeline {
                name: "p".into(),
                id_if_new: PipelineId("pl-1".into()),
                spec_yaml: "kind: Pipeline\n".into(),
                canonical: "{}".into(),
                at_ms: 1,
                if_generation: None,
            }),
        );
        s
    }

    /// Places instance `a/0` of pipeline `p` on `node`.
    fn place(node: u64) -> Command {
        Command::SetPlacement(crate::placements::SetPlacement {
            pipeline: "p".into(),
            generation: 1,
            instances: [("a/0".to_owned(), NodeId(node))].into(),
        })
    }

    fn report_cmd(node: u64, instances: Vec<(String, Option<InstanceStatus>)>) -> Command {
        Command::ReportRuntime(ReportRuntime {
            node: NodeId(node),
            pipelines: vec![PipelineReport {
                pipeline: "p".into(),
                instances,
                events: vec![event(1)],
            }],
        })
    }

    #[test]
    fn reports_set_and_clear_instances_and_bound_events() {
        let mut s = with_pipeline();
        apply(
            &mut s,
            2,
            &report_cmd(1, vec![("a/0".into(), Some(status(1, 0)))]),
        );
        assert_eq!(s.runtime["p"].instances["a/0"], status(1, 0));
        // Node 2 now runs it; a late "gone" from node 1 must not clear node 2's status.
        apply(
            &mut s,
            3,
            &report_cmd(2, vec![("a/0".into(), Some(status(2, 0)))]),
        );
        apply(&mut s, 4, &report_cmd(1, vec![("a/0".into(), None)]));
        assert_eq!(s.runtime["p"].instances["a/0"].node, NodeId(2));
        apply(&mut s, 5, &report_cmd(2, vec![("a/0".into(), None)]));
        assert!(s.runtime["p"].instances.is_empty());
        for i in 0..100 {
            apply(&mut s, 6 + i, &report_cmd(2, vec![]));
        }
        assert_eq!(s.runtime["p"].events.len(), MAX_EVENTS_PER_PIPELINE);
    }

    #[test]
    fn a_status_from_a_node_the_instance_moved_away_from_is_refused() {
        let mut s = with_pipeline();
        apply(&mut s, 2, &place(1));
        apply(
            &mut s,
            3,
            &report_cmd(1, vec![("a/0".into(), Some(status(1, 0)))]),
        );
        assert_eq!(s.runtime["p"].instances["a/0"].node, NodeId(1));
        // Moved to node 2, which reports; node 1's late report is refused, its events kept.
        apply(&mut s, 4, &place(2));
        apply(
            &mut s,
            5,
            &report_cmd(2, vec![("a/0".into(), Some(status(2, 0)))]),
        );
        apply(
            &mut s,
            6,
            &report_cmd(1, vec![("a/0".into(), Some(status(1, 1)))]),
        );
        assert_eq!(s.runtime["p"].instances["a/0"], status(2, 0));
        assert_eq!(s.runtime["p"].events.len(), 3);
        // A node may not report a status in another node's name.
        apply(
            &mut s,
            7,
            &report_cmd(1, vec![("a/0".into(), Some(status(2, 5)))]),
        );
        assert_eq!(s.runtime["p"].instances["a/0"], status(2, 0));
    }

    #[test]
    fn a_status_from_an_older_placement_on_the_same_node_is_refused() {
        let mut s = with_pipeline();
        let with_epoch = |restarts: u32, epoch: u64| InstanceStatus {
            epoch: Some(epoch),
            ..status(1, restarts)
        };
        // On node 1 (epoch 2), moved to node 2 (epoch 4) and back to node 1 (epoch 6).
        apply(&mut s, 2, &place(1));
        apply(&mut s, 4, &place(2));
        apply(&mut s, 6, &place(1));
        assert_eq!(s.placements["p"].epoch("a/0"), Some(6));
        apply(
            &mut s,
            7,
            &report_cmd(1, vec![("a/0".into(), Some(with_epoch(0, 6)))]),
        );
        // The first copy's report, delayed past both moves, must not replace the new one's.
        apply(
            &mut s,
            8,
            &report_cmd(1, vec![("a/0".into(), Some(with_epoch(9, 2)))]),
        );
        assert_eq!(s.runtime["p"].instances["a/0"], with_epoch(0, 6));
        apply(
            &mut s,
            9,
            &report_cmd(1, vec![("a/0".into(), Some(with_epoch(1, 6)))]),
        );
        assert_eq!(s.runtime["p"].instances["a/0"].restarts, 1);
    }

    #[test]
    fn reports_for_unknown_pipelines_are_dropped() {
        let mut s = State::default();
        let (_, touched) = apply(
            &mut s,
            2,
            &report_cmd(1, vec![("a/0".into(), Some(status(1, 0)))]),
        );
        assert!(touched.is_empty());
        assert!(s.runtime.is_empty());
    }
}
