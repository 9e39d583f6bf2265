//! Where each component instance of a pipeline runs. The leader's scheduler decides; every
//! node's supervisor runs the instances placed on it.

use crate::{NodeId, Outcome, Rejection, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An instance key: `<component id>/<replica>`.
pub fn instance_key(component: &str, replica: u32) -> String {
    format!("{component}/{replica}")
}

/// The placement of one pipeline's instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The pipeline generation this placement was computed for.
    pub generation: u64,
    pub instances: BTreeMap<String, NodeId>,
    /// Log index of the last change.
    pub revision: u64,
    /// Each instance's epoch: the log index of the placement that put it on its current node.
    /// The supervisor passes it to the instance (`FLOWCTL_EPOCH`), and reports that carry an
    /// older epoch (from a copy left on a node the instance moved away from) are refused.
    /// Empty in placements written before epochs existed: nothing is fenced by epoch there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub epochs: BTreeMap<String, u64>,
}

impl Placement {
    /// The epoch of the instance with this key, if it is placed and has one.
    pub fn epoch(&self, key: &str) -> Option<u64> {
        self.epochs.get(key).copied()
    }

    /// The instance key (`component/replica`) of the instance whose component id is `id`
    /// (`component` for a single replica, `component-replica` otherwise; see
    /// `flowctl_spec::instance_id`), found from the placed keys alone.
    pub fn key_of_instance_id(&self, id: &str) -> Option<&str> {
        let mut replicas: BTreeMap<&str, u32> = BTreeMap::new();
        for key in self.instances.keys() {
            if let Some((component, _)) = key.rsplit_once('/') {
                *replicas.entry(component).or_default() += 1;
            }
        }
        self.instances.keys().map(String::as_str).find(|key| {
            let Some((component, replica)) = key.rsplit_once('/') else {
                return false;
            };
            if replicas.get(component).copied().unwrap_or(0) > 1 {
                id.strip_prefix(component)
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|r| r == replica)
            } else {
                id == component
            }
        })
    }

    /// Whether a report that carries `epoch` for instance `key` comes from an older placement
    /// of it than the current one (`false` where either side has no epoch).
    pub fn fences(&self, key: &str, epoch: Option<u64>) -> bool {
        match (self.epoch(key), epoch) {
            (Some(current), Some(theirs)) => theirs < current,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPlacement {
    pub pipeline: String,
    pub generation: u64,
    pub instances: BTreeMap<String, NodeId>,
}

pub(crate) fn set(state: &mut State, index: u64, c: &SetPlacement) -> (Outcome, Vec<Touched>) {
    // A placement for a generation that has since changed (or a deleted pipeline) is stale.
    match state.pipelines.get(&c.pipeline) {
        Some(p) if p.generation == c.generation => {}
        Some(p) => {
            return (
                Outcome::Rejected(Rejection::Invalid(format!(
                    "placement for generation {} of {:?}, which is at generation {}",
                    c.generation, c.pipeline, p.generation
                ))),
                vec![],
            )
        }
        None => {
            return (
                Outcome::Rejected(Rejection::NotFound {
                    kind: "pipeline".into(),
                    name: c.pipeline.clone(),
                }),
                vec![],
            )
        }
    }
    let old = state.placements.get(&c.pipeline);
    if old.is_some_and(|old| old.generation == c.generation && old.instances == c.instances) {
        return (Outcome::PlacementUnchanged, vec![]);
    }
    // An instance that stays on its node keeps its epoch; one that moves (or is new) gets
    // this entry's index.
    let epochs = c
        .instances
        .iter()
        .map(|(key, node)| {
            let kept = old
                .filter(|old| old.instances.get(key) == Some(node))
                .and_then(|old| old.epoch(key));
            (key.clone(), kept.unwrap_or(index))
        })
        .collect();
    let new = Placement {
        generation: c.generation,
        instances: c.instances.clone(),
        revision: index,
        epochs,
    };
    state.placements.insert(c.pipeline.clone(), new);
    (
        Outcome::PlacementSet {
            pipeline: c.pipeline.clone(),
        },
        vec![Touched::Placement(c.pipeline.clone())],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::{ApplyPipeline, DeletePipeline};
    use crate::{apply, Command, PipelineId};

    fn pipeline(canonical: &str) -> Command {
        Command::ApplyPipeline(ApplyPipeline {
            name: "p".into(),
            id_if_new: PipelineId::from_random(1),
            spec_yaml: String::new(),
            canonical: canonical.into(),
            at_ms: 1,
            if_generation: None,
        })
    }

    fn place(generation: u64, node: u64) -> Command {
        Command::SetPlacement(SetPlacement {
            pipeline: "p".into(),
            generation,
            instances: [(instance_key("src", 0), NodeId(node))].into(),
        })
    }

    #[test]
    fn placement_follows_the_current_generation_and_goes_with_the_pipeline() {
        let mut s = State::default();
        assert!(matches!(
            apply(&mut s, 1, &place(1, 7)).0,
            Outcome::Rejected(_)
        ));
        apply(&mut s, 2, &pipeline("{}"));
        assert!(matches!(
            apply(&mut s, 3, &place(1, 7)).0,
            Outcome::PlacementSet { .. }
        ));
        assert!(matches!(
            apply(&mut s, 4, &place(1, 7)).0,
            Outcome::PlacementUnchanged
        ));
        apply(&mut s, 5, &pipeline("{\"v\":2}"));
        assert!(
            matches!(apply(&mut s, 6, &place(1, 8)).0, Outcome::Rejected(_)),
            "stale generation"
        );
        assert!(matches!(
            apply(&mut s, 7, &place(2, 8)).0,
            Outcome::PlacementSet { .. }
        ));
        let (_, touched) = apply(
            &mut s,
            8,
            &Command::DeletePipeline(DeletePipeline { name: "p".into() }),
        );
        assert!(s.placements.is_empty());
        assert!(touched.contains(&Touched::Placement("p".into())));
    }

    fn place_many(generation: u64, instances: &[(&str, u64)]) -> Command {
        Command::SetPlacement(SetPlacement {
            pipeline: "p".into(),
            generation,
            instances: instances
                .iter()
                .map(|(k, n)| ((*k).to_owned(), NodeId(*n)))
                .collect(),
        })
    }

    #[test]
    fn an_instance_keeps_its_epoch_on_its_node_and_gets_a_new_one_when_it_moves() {
        let mut s = State::default();
        apply(&mut s, 2, &pipeline("{}"));
        apply(&mut s, 3, &place_many(1, &[("a/0", 1), ("b/0", 2)]));
        let p = &s.placements["p"];
        assert_eq!((p.epoch("a/0"), p.epoch("b/0")), (Some(3), Some(3)));
        // b moves to node 3; a stays; a new generation keeps a's epoch too.
        apply(&mut s, 4, &pipeline("{\"v\":2}"));
        apply(&mut s, 5, &place_many(2, &[("a/0", 1), ("b/0", 3)]));
        let p = &s.placements["p"];
        assert_eq!((p.epoch("a/0"), p.epoch("b/0")), (Some(3), Some(5)));
        assert!(p.fences("b/0", Some(3)), "the copy left on node 2");
        assert!(!p.fences("b/0", Some(5)));
        assert!(!p.fences("b/0", None), "no epoch given: not fenced");
        // Back to node 2: a new epoch, so the copy that ran there before is still fenced.
        apply(&mut s, 6, &place_many(2, &[("a/0", 1), ("b/0", 2)]));
        assert_eq!(s.placements["p"].epoch("b/0"), Some(6));
        assert!(s.placements["p"].fences("b/0", Some(3)));
    }

    #[test]
    fn a_legacy_placement_without_epochs_fences_nothing() {
        let p = Placement {
            generation: 1,
            instances: [("a/0".to_owned(), NodeId(1))].into(),
            revision: 3,
            epochs: BTreeMap::new(),
        };
        assert!(!p.fences("a/0", Some(1)));
    }

    #[test]
    fn instance_ids_map_back_to_their_keys() {
        let p = Placement {
            generation: 1,
            instances: [
                ("src/0".to_owned(), NodeId(1)),
                ("proc/0".to_owned(), NodeId(1)),
                ("proc/1".to_owned(), NodeId(2)),
                ("proc-x/0".to_owned(), NodeId(2)),
            ]
            .into(),
            revision: 3,
            epochs: BTreeMap::new(),
        };
        assert_eq!(p.key_of_instance_id("src"), Some("src/0"));
        assert_eq!(p.key_of_instance_id("proc-1"), Some("proc/1"));
        assert_eq!(p.key_of_instance_id("proc-0"), Some("proc/0"));
        assert_eq!(p.key_of_instance_id("proc-x"), Some("proc-x/0"));
        assert_eq!(p.key_of_instance_id("proc"), None);
        assert_eq!(p.key_of_instance_id("proc-2"), None);
        assert_eq!(p.key_of_instance_id("src-0"), None);
    }
}
