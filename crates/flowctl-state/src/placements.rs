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
    let new = Placement {
        generation: c.generation,
        instances: c.instances.clone(),
        revision: index,
    };
    if state
        .placements
        .get(&c.pipeline)
        .is_some_and(|old| old.generation == new.generation && old.instances == new.instances)
    {
        return (Outcome::PlacementUnchanged, vec![]);
    }
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
}
