//! The scheduler (leader only): probes the members, keeps every placement whose node is alive,
//! and places the instances of new pipelines, new replicas and silent nodes on the least
//! loaded live nodes ([`place`]), committing them as [`SetPlacement`] with `Scheduled` events.

use super::{DeployOptions, FENCE_MARGIN};
use crate::clock::now_ms;
use crate::spec_cache::SpecCache;
use flowctl_proto::internal::v1 as ipb;
use flowctl_raft::RaftNode;
use flowctl_spec::ValidatedPipeline;
use flowctl_state::placements::{instance_key, SetPlacement};
use flowctl_state::runtime::{PipelineReport, ReportRuntime, RuntimeEvent};
use flowctl_state::{Command, NodeId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Whether a stored document uses a driver that flowctl runs itself: `process` (the default)
/// or `docker` (`kubernetes` workloads are Kubernetes' to run).
fn deployed_by_flowctl(canonical: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        spec: Spec,
    }
    #[derive(serde::Deserialize, Default)]
    struct Spec {
        #[serde(default)]
        driver: Option<String>,
    }
    match serde_json::from_str::<Doc>(canonical) {
        Ok(d) => d
            .spec
            .driver
            .is_none_or(|d| d == "process" || d == "docker"),
        Err(_) => true,
    }
}

async fn probe(node: &RaftNode, addr: &str) -> bool {
    let Ok(mut c) = node.peers().client(addr) else {
        return false;
    };
    let mut req = tonic::Request::new(ipb::NodeStatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    c.node_status(req).await.is_ok()
}

pub(super) async fn run_scheduler(
    node: RaftNode,
    specs: SpecCache,
    opts: DeployOptions,
    cancel: CancellationToken,
) {
    let mut last_ok: HashMap<u64, Instant> = HashMap::new();
    // Pipelines (name, generation) whose topics exist; a failure is reported once.
    let mut topics_ready: HashSet<(String, u64)> = HashSet::new();
    let mut topics_failed: HashSet<(String, u64)> = HashSet::new();
    // Name → (generation, whether flowctl deploys it): each stored document's driver is read
    // once per generation, not on every pass (a pass runs every second over every pipeline).
    let mut deployed: HashMap<String, (u64, bool)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            last_ok.clear();
            topics_ready.clear();
            topics_failed.clear();
            deployed.clear();
            continue;
        }
        let st = node.status();
        let now = Instant::now();
        let probes = st.peers.iter().map(|(&id, addr)| {
            let node = node.clone();
            let addr = addr.clone();
            async move { (id, id == node.id() || probe(&node, &addr).await) }
        });
        for (id, ok) in futures::future::join_all(probes).await {
            // A node first seen now (or by a new leader) gets a full grace period.
            let seen = last_ok.entry(id).or_insert(now);
            if ok {
                *seen = now;
            }
        }
        last_ok.retain(|id, _| st.nodes.contains_key(id));
        let live: Vec<u64> = st
            .nodes
            .keys()
            .copied()
            .filter(|id| {
                last_ok
                    .get(id)
                    .is_some_and(|t| now.duration_since(*t) < opts.node_grace + FENCE_MARGIN)
            })
            .collect();
        if live.is_empty() {
            continue;
        }
        // Copy only what is needed: names and generations, the documents not yet parsed at
        // their generation, and the placements.
        let (pipelines, placements) = node
            .read_stale(|s| {
                deployed.retain(|name, _| s.pipelines.contains_key(name));
                specs.retain(|name| s.pipelines.contains_key(name));
                let pipelines: Vec<(String, u64, Option<String>)> = s
                    .pipelines
                    .values()
                    // Only process- and docker-driver pipelines are deployed here; the driver is
                    // read from the canonical JSON (much cheaper than validating the YAML
                    // again), once per generation.
                    .filter(|p| match deployed.get(&p.name) {
                        Some((g, d)) if *g == p.generation => *d,
                        _ => {
                            let d = deployed_by_flowctl(&p.canonical);
                            deployed.insert(p.name.clone(), (p.generation, d));
                            d
                        }
                    })
                    .map(|p| {
                        let yaml = specs
                            .cached(&p.name, p.generation)
                            .is_none()
                            .then(|| p.spec_yaml.clone());
                        (p.name.clone(), p.generation, yaml)
                    })
                    .collect();
                (pipelines, s.placements.clone())
            })
            .0;
        // Load: instances kept where they are, counted first across all pipelines.
        let mut load: BTreeMap<NodeId, usize> = live.iter().map(|&n| (NodeId(n), 0)).collect();
        for p in placements.values() {
            for n in p.instances.values() {
                if let Some(l) = load.get_mut(n) {
                    *l += 1;
                }
            }
        }
        for (name, generation, yaml) in &pipelines {
            let generation = *generation;
            let spec = match (specs.cached(name, generation), yaml) {
                (Some(v), _) => v,
                (None, Some(y)) => specs.get(name, generation, y),
                (None, None) => None,
            };
            let Some(spec) = spec else {
                continue;
            };
            if spec.spec().driver == flowctl_spec::Driver::Kubernetes {
                // Kubernetes runs those workloads; they are stored, not run here.
                continue;
            }
            let old = placements.get(name);
            // Topics first, so that instances find them when they start.
            let key = (name.clone(), generation);
            if old.is_none_or(|o| o.generation != generation) && !topics_ready.contains(&key) {
                match ensure_topics(&spec, &opts).await {
                    Ok(()) => {
                        topics_ready.insert(key);
                    }
                    Err(e) => {
                        tracing::warn!(pipeline = %name, error = %e, "pipeline topics not created; will retry");
                        if topics_failed.insert(key) {
                            let event = Command::ReportRuntime(ReportRuntime {
                                node: NodeId(node.id()),
                                pipelines: vec![PipelineReport {
                                    pipeline: name.clone(),
                                    instances: Vec::new(),
                                    events: vec![RuntimeEvent {
                                        at_ms: now_ms(),
                                        node: NodeId(node.id()),
                                        instance: String::new(),
                                        reason: "TopicsFailed".into(),
                                        message: e,
                                        warning: true,
                                    }],
                                }],
                            });
                            let _ = node.propose(event).await;
                        }
                        continue;
                    }
                }
            }
            // Every instance of the spec, in component and replica order, with its node so far.
            let wanted: Vec<(String, Option<NodeId>)> = spec
                .components()
                .flat_map(|(_, c)| (0..c.replicas).map(move |r| instance_key(c.id.as_str(), r)))
                .map(|key| {
                    let current = old.and_then(|o| o.instances.get(&key)).copied();
                    (key, current)
                })
                .collect();
            // `live` is not empty, so there is a placement.
            let Some(Placed { instances, changes }) = place(&wanted, &mut load) else {
                continue;
            };
            let unchanged =
                old.is_some_and(|o| o.generation == generation && o.instances == instances);
            if unchanged {
                continue;
            }
            // Say why instances moved: the events go in the same log entry as the placement.
            let me = NodeId(node.id());
            let at_ms = now_ms();
            let events: Vec<RuntimeEvent> = changes
                .into_iter()
                .map(|Change { key, from, to }| {
                    let message = match from {
                        Some(prev) => format!(
                            "moved from node {} (not answering for {:?}) to node {}",
                            prev.0,
                            opts.node_grace + FENCE_MARGIN,
                            to.0
                        ),
                        None => format!("placed on node {}", to.0),
                    };
                    RuntimeEvent {
                        at_ms,
                        node: me,
                        instance: key,
                        reason: "Scheduled".into(),
                        message,
                        // The instance was placed before: on a node that is down now.
                        warning: from.is_some(),
                    }
                })
                .collect();
            let mut cmds = vec![Command::SetPlacement(SetPlacement {
                pipeline: name.clone(),
                generation,
                instances,
            })];
            if !events.is_empty() {
                cmds.push(Command::ReportRuntime(ReportRuntime {
                    node: me,
                    pipelines: vec![PipelineReport {
                        pipeline: name.clone(),
                        instances: Vec::new(),
                        events,
                    }],
                }));
            }
            let cmd = Command::Batch(cmds);
            match node.propose(cmd).await {
                Ok(_) => {
                    tracing::info!(pipeline = %name, generation = generation, "placed pipeline instances")
                }
                Err(e) => tracing::warn!(pipeline = %name, error = %e, "placement not committed"),
            }
        }
    }
}

/// What [`place`] decided for one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Placed {
    /// Every instance key with its node.
    pub(super) instances: BTreeMap<String, NodeId>,
    /// The instances whose node is new, in key order.
    pub(super) changes: Vec<Change>,
}

/// One instance placed on a node it was not on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    pub(super) key: String,
    /// The node it was placed on (which is not eligible any more); `None` when it was not
    /// placed.
    pub(super) from: Option<NodeId>,
    pub(super) to: NodeId,
}

/// Places one pipeline's instances; no I/O and no clock: the caller decides which nodes are
/// eligible (answering within `node_grace` plus [`FENCE_MARGIN`]).
///
/// `wanted` lists the pipeline's instance keys, in the order new ones are placed (component,
/// then replica), each with the node it is placed on now, if any. `load` holds the eligible
/// nodes, each with the number of instances placed on it (across all pipelines).
///
/// An instance stays on its node while that node is eligible, so nothing moves needlessly;
/// every other one goes to the least loaded eligible node (the lowest id among equals) and
/// counts in `load` from then on, so that the next instance, and the next pipeline of the same
/// round, see it. `None` when no node is eligible: nothing can be placed, and the current
/// placement stays as it is.
pub(super) fn place(
    wanted: &[(String, Option<NodeId>)],
    load: &mut BTreeMap<NodeId, usize>,
) -> Option<Placed> {
    if load.is_empty() {
        return None;
    }
    let mut instances = BTreeMap::new();
    let mut changes = Vec::new();
    for (key, current) in wanted {
        let n = match current.filter(|n| load.contains_key(n)) {
            Some(n) => n,
            None => {
                let (&best, _) = load.iter().min_by_key(|(id, l)| (**l, **id))?;
                *load.entry(best).or_default() += 1;
                changes.push(Change {
                    key: key.clone(),
                    from: *current,
                    to: best,
                });
                best
            }
        };
        instances.insert(key.clone(), n);
    }
    changes.sort_by(|a, b| a.key.cmp(&b.key));
    Some(Placed { instances, changes })
}

/// Creates the pipeline's topics (one per producing component, and its DLQ) when it has
/// brokers; partitions and replication come from `spec.bus`.
async fn ensure_topics(spec: &ValidatedPipeline, opts: &DeployOptions) -> Result<(), String> {
    let brokers = opts.brokers_of(spec);
    if brokers.is_empty() {
        return Ok(());
    }
    let bus = &spec.spec().bus;
    let mut names: Vec<String> = spec
        .components()
        .filter(|(kind, _)| *kind != flowctl_spec::ComponentKind::Sink)
        .map(|(_, c)| flowctl_spec::topic_name(spec, &c.id))
        .collect();
    names.push(flowctl_spec::dlq_topic_name(spec));
    let topics: Vec<flowctl_bus::TopicSpec> = names
        .into_iter()
        .map(|n| {
            let mut t = flowctl_bus::TopicSpec::new(n);
            if let Some(p) = bus.partitions {
                t = t.with_partitions(p);
            }
            if let Some(r) = bus.replication_factor {
                t = t.with_replication_factor(r);
            }
            t
        })
        .collect();
    let brokers = brokers.join(",");
    flowctl_bus::ensure_topics(&brokers, &topics, Duration::from_secs(15))
        .await
        .map_err(|e| format!("cannot create the topics on the Kafka broker {brokers}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(nodes: &[(u64, usize)]) -> BTreeMap<NodeId, usize> {
        nodes.iter().map(|&(n, l)| (NodeId(n), l)).collect()
    }

    fn wanted(instances: &[(&str, Option<u64>)]) -> Vec<(String, Option<NodeId>)> {
        instances
            .iter()
            .map(|&(k, n)| (k.to_owned(), n.map(NodeId)))
            .collect()
    }

    fn nodes_of(p: &Placed) -> Vec<(&str, u64)> {
        p.instances.iter().map(|(k, n)| (k.as_str(), n.0)).collect()
    }

    #[test]
    fn place_spreads_replicas_over_nodes_by_load() {
        let mut l = load(&[(1, 0), (2, 0), (3, 0)]);
        let p = place(
            &wanted(&[("c/0", None), ("c/1", None), ("c/2", None)]),
            &mut l,
        )
        .expect("nodes are eligible");
        assert_eq!(nodes_of(&p), [("c/0", 1), ("c/1", 2), ("c/2", 3)]);
        assert_eq!(l, load(&[(1, 1), (2, 1), (3, 1)]));

        // The least loaded first; the lowest id among equals; each placement counts.
        let mut l = load(&[(1, 2), (2, 0), (3, 1)]);
        let p = place(
            &wanted(&[("a/0", None), ("a/1", None), ("a/2", None), ("b/0", None)]),
            &mut l,
        )
        .expect("nodes are eligible");
        assert_eq!(
            nodes_of(&p),
            [("a/0", 2), ("a/1", 2), ("a/2", 3), ("b/0", 1)]
        );
        assert_eq!(l, load(&[(1, 3), (2, 2), (3, 2)]));
        assert_eq!(
            p.changes,
            [("a/0", 2), ("a/1", 2), ("a/2", 3), ("b/0", 1)].map(|(k, n)| Change {
                key: k.into(),
                from: None,
                to: NodeId(n),
            })
        );
    }

    #[test]
    fn place_keeps_instances_on_live_nodes_where_they_are() {
        // All on node 1 while 2 and 3 are idle: still nothing moves.
        let mut l = load(&[(1, 3), (2, 0), (3, 0)]);
        let w = wanted(&[("c/0", Some(1)), ("c/1", Some(1)), ("c/2", Some(1))]);
        let p = place(&w, &mut l).expect("nodes are eligible");
        assert_eq!(nodes_of(&p), [("c/0", 1), ("c/1", 1), ("c/2", 1)]);
        assert!(p.changes.is_empty());
        assert_eq!(l, load(&[(1, 3), (2, 0), (3, 0)]));

        // A new replica goes to the least loaded node; the others stay.
        let w = wanted(&[
            ("c/0", Some(1)),
            ("c/1", Some(1)),
            ("c/2", Some(1)),
            ("c/3", None),
        ]);
        let p = place(&w, &mut l).expect("nodes are eligible");
        assert_eq!(
            nodes_of(&p),
            [("c/0", 1), ("c/1", 1), ("c/2", 1), ("c/3", 2)]
        );
        assert_eq!(
            p.changes,
            [Change {
                key: "c/3".into(),
                from: None,
                to: NodeId(2)
            }]
        );
    }

    #[test]
    fn place_moves_only_the_instances_of_a_node_that_is_down() {
        // Node 3 is down: it is not eligible, and its instances do not count in `load`.
        let mut l = load(&[(1, 2), (2, 1)]);
        let w = wanted(&[
            ("a/0", Some(1)),
            ("a/1", Some(2)),
            ("a/2", Some(3)),
            ("b/0", Some(1)),
            ("b/1", Some(3)),
        ]);
        let p = place(&w, &mut l).expect("nodes are eligible");
        assert_eq!(
            nodes_of(&p),
            [("a/0", 1), ("a/1", 2), ("a/2", 2), ("b/0", 1), ("b/1", 1)]
        );
        assert_eq!(
            p.changes,
            [("a/2", 2), ("b/1", 1)].map(|(k, n)| Change {
                key: k.into(),
                from: Some(NodeId(3)),
                to: NodeId(n),
            })
        );
        assert_eq!(l, load(&[(1, 3), (2, 2)]));
    }

    #[test]
    fn place_is_deterministic_for_equal_input() {
        let w = wanted(&[
            ("a/0", Some(9)),
            ("a/1", None),
            ("b/0", Some(2)),
            ("b/1", Some(7)),
            ("c/0", None),
        ]);
        let start = load(&[(4, 1), (2, 1), (7, 0), (5, 1)]);
        let (mut l1, mut l2) = (start.clone(), start.clone());
        let p1 = place(&w, &mut l1);
        let p2 = place(&w, &mut l2);
        assert!(p1.is_some());
        assert_eq!(p1, p2);
        assert_eq!(l1, l2);
    }

    #[test]
    fn place_places_nothing_without_an_eligible_node() {
        let mut l = BTreeMap::new();
        let w = wanted(&[("c/0", Some(1)), ("c/1", None)]);
        assert_eq!(place(&w, &mut l), None);
        assert!(l.is_empty());
        assert_eq!(place(&[], &mut l), None);
    }
}
