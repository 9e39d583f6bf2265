//! Pipeline documents in the replicated state.

use crate::{Outcome, PipelineId, Rejection, State, Touched};
use serde::{Deserialize, Serialize};

/// A stored pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub name: String,
    pub id: PipelineId,
    /// Starts at 1 and grows by one each time the spec changes.
    pub generation: u64,
    /// The document as last applied.
    pub spec_yaml: String,
    /// The canonical JSON of the document, compared to detect changes.
    pub canonical: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Log index of the last change.
    pub revision: u64,
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResult {
    Created,
    Configured,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPipeline {
    pub name: String,
    /// The id to use if the pipeline does not exist yet.
    pub id_if_new: PipelineId,
    pub spec_yaml: String,
    pub canonical: String,
    /// The proposer's clock.
    pub at_ms: u64,
    /// Compare-and-set: apply only if the stored generation is this one (0: only if the
    /// pipeline does not exist yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_generation: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePipeline {
    pub name: String,
}

pub(crate) fn apply_pipeline(
    state: &mut State,
    index: u64,
    c: &ApplyPipeline,
) -> (Outcome, Vec<Touched>) {
    // The name becomes a state key and a directory name (`<data-dir>/logs/<name>`,
    // `<data-dir>/work/<name>`) on every node, and a command may come from anywhere that can
    // propose, so it must be a DNS label here too, not only in the API's validation. The
    // document itself stays opaque to the state machine.
    if let Err(m) = flowctl_spec::check_name(&c.name) {
        return (
            Outcome::Rejected(Rejection::Invalid(format!("pipeline name: {m}"))),
            vec![],
        );
    }
    let touched = vec![Touched::Pipeline(c.name.clone())];
    if state.pipeline_ids.len() != state.pipelines.len() {
        state.pipeline_ids = state
            .pipelines
            .values()
            .map(|p| (p.id.clone(), p.name.clone()))
            .collect();
    }
    if let Some(want) = c.if_generation {
        let have = state.pipelines.get(&c.name).map_or(0, |p| p.generation);
        if have != want {
            let at = if have == 0 {
                "does not exist".to_owned()
            } else {
                format!("is at generation {have}")
            };
            return (
                Outcome::Rejected(Rejection::Conflict(format!(
                    "pipeline {} {at}, not {want} (--if-generation)",
                    c.name
                ))),
                vec![],
            );
        }
    }
    match state.pipelines.get_mut(&c.name) {
        Some(existing) if existing.canonical == c.canonical => (
            Outcome::Pipeline {
                record: existing.clone(),
                result: ApplyResult::Unchanged,
            },
            vec![],
        ),
        Some(existing) => {
            existing.generation += 1;
            existing.spec_yaml.clone_from(&c.spec_yaml);
            existing.canonical.clone_from(&c.canonical);
            existing.updated_at_ms = c.at_ms;
            existing.revision = index;
            (
                Outcome::Pipeline {
                    record: existing.clone(),
                    result: ApplyResult::Configured,
                },
                touched,
            )
        }
        None => {
            if state.pipeline_ids.contains_key(&c.id_if_new) {
                return (
                    Outcome::Rejected(Rejection::Invalid(format!(
                        "pipeline id {} is already taken",
                        c.id_if_new
                    ))),
                    vec![],
                );
            }
            let record = PipelineRecord {
                name: c.name.clone(),
                id: c.id_if_new.clone(),
                generation: 1,
                spec_yaml: c.spec_yaml.clone(),
                canonical: c.canonical.clone(),
                created_at_ms: c.at_ms,
                updated_at_ms: c.at_ms,
                revision: index,
            };
            state.pipelines.insert(c.name.clone(), record.clone());
            state
                .pipeline_ids
                .insert(record.id.clone(), record.name.clone());
            (
                Outcome::Pipeline {
                    record,
                    result: ApplyResult::Created,
                },
                touched,
            )
        }
    }
}

pub(crate) fn delete_pipeline(state: &mut State, c: &DeletePipeline) -> (Outcome, Vec<Touched>) {
    match state.pipelines.remove(&c.name) {
        Some(rec) => {
            state.pipeline_ids.remove(&rec.id);
            let mut touched = vec![Touched::Pipeline(c.name.clone())];
            if state.placements.remove(&c.name).is_some() {
                touched.push(Touched::Placement(c.name.clone()));
            }
            if state.runtime.remove(&c.name).is_some() {
                touched.push(Touched::Runtime(c.name.clone()));
            }
            touched.extend(crate::dlq::drop_pipeline(state, &c.name));
            touched.extend(crate::replay::pipeline_deleted(state, &c.name));
            (
                Outcome::PipelineDeleted {
                    name: c.name.clone(),
                },
                touched,
            )
        }
        None => (
            Outcome::Rejected(Rejection::NotFound {
                kind: "pipeline".into(),
                name: c.name.clone(),
            }),
            vec![],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply, Command, Rejection};

    fn cmd(name: &str, canonical: &str, id: u64, at: u64) -> Command {
        Command::ApplyPipeline(ApplyPipeline {
            name: name.into(),
            id_if_new: PipelineId::from_random(id),
            spec_yaml: format!("# {canonical}"),
            canonical: canonical.into(),
            at_ms: at,
            if_generation: None,
        })
    }

    #[test]
    fn first_apply_creates_with_proposed_id_and_generation_one() {
        let mut s = State::default();
        let (out, touched) = apply(&mut s, 5, &cmd("a", "{}", 1, 100));
        let Outcome::Pipeline { record, result } = out else {
            panic!("{out:?}")
        };
        assert_eq!(result, ApplyResult::Created);
        assert_eq!(record.generation, 1);
        assert_eq!(record.id, PipelineId::from_random(1));
        assert_eq!(record.revision, 5);
        assert_eq!(touched, vec![Touched::Pipeline("a".into())]);
    }

    #[test]
    fn identical_reapply_changes_nothing_and_keeps_id() {
        let mut s = State::default();
        apply(&mut s, 1, &cmd("a", "{}", 1, 100));
        let before = s.clone();
        let (out, touched) = apply(&mut s, 2, &cmd("a", "{}", 2, 200));
        assert!(matches!(
            out,
            Outcome::Pipeline {
                result: ApplyResult::Unchanged,
                ..
            }
        ));
        assert!(touched.is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn changed_spec_bumps_generation_only() {
        let mut s = State::default();
        apply(&mut s, 1, &cmd("a", "{}", 1, 100));
        let (out, _) = apply(&mut s, 2, &cmd("a", "{\"x\":1}", 2, 200));
        let Outcome::Pipeline { record, result } = out else {
            panic!()
        };
        assert_eq!(result, ApplyResult::Configured);
        assert_eq!(record.generation, 2);
        assert_eq!(record.id, PipelineId::from_random(1));
        assert_eq!(record.created_at_ms, 100);
        assert_eq!(record.updated_at_ms, 200);
    }

    #[test]
    fn a_name_that_is_not_a_dns_label_is_rejected_and_nothing_is_stored() {
        let mut s = State::default();
        let too_long = "a".repeat(flowctl_spec::MAX_NAME_LEN + 1);
        for name in ["", "../etc", "a/b", "A", "-a", "a.b", too_long.as_str()] {
            let (out, touched) = apply(&mut s, 1, &cmd(name, "{}", 1, 1));
            assert!(
                matches!(out, Outcome::Rejected(Rejection::Invalid(_))),
                "{name:?}: {out:?}"
            );
            assert!(touched.is_empty(), "{name:?}");
        }
        assert_eq!(s, State::default());
    }

    #[test]
    fn delete_of_missing_pipeline_is_a_recorded_rejection() {
        let mut s = State::default();
        let (out, _) = apply(
            &mut s,
            1,
            &Command::DeletePipeline(DeletePipeline {
                name: "nope".into(),
            }),
        );
        assert!(matches!(out, Outcome::Rejected(Rejection::NotFound { .. })));
    }

    #[test]
    fn duplicate_proposed_id_is_rejected() {
        let mut s = State::default();
        apply(&mut s, 1, &cmd("a", "{}", 7, 1));
        let (out, _) = apply(&mut s, 2, &cmd("b", "{}", 7, 1));
        assert!(matches!(out, Outcome::Rejected(Rejection::Invalid(_))));
        assert!(!s.pipelines.contains_key("b"));
    }

    #[test]
    fn id_index_survives_decoding_and_deletes() {
        let mut s = State::default();
        apply(&mut s, 1, &cmd("a", "{}", 7, 1));
        let mut decoded =
            crate::codec::decode_state(&crate::codec::encode_state(&s).unwrap()).unwrap();
        let (out, _) = apply(&mut decoded, 2, &cmd("b", "{}", 7, 1));
        assert!(
            matches!(out, Outcome::Rejected(_)),
            "the index must be rebuilt after decoding"
        );
        apply(
            &mut decoded,
            3,
            &Command::DeletePipeline(DeletePipeline { name: "a".into() }),
        );
        let (out, _) = apply(&mut decoded, 4, &cmd("b", "{}", 7, 1));
        assert!(matches!(
            out,
            Outcome::Pipeline {
                result: ApplyResult::Created,
                ..
            }
        ));
    }

    #[test]
    fn a_batch_applies_in_order_with_one_outcome_each() {
        let mut s = State::default();
        let batch = Command::Batch(vec![
            cmd("a", "{}", 1, 1),
            cmd("a", "{\"v\":2}", 2, 2),
            Command::DeletePipeline(DeletePipeline { name: "zz".into() }),
            Command::Batch(vec![]),
        ]);
        let (out, touched) = apply(&mut s, 9, &batch);
        let Outcome::Batch(outs) = out else {
            panic!("{out:?}")
        };
        assert_eq!(outs.len(), 4);
        assert!(matches!(
            outs[0],
            Outcome::Pipeline {
                result: ApplyResult::Created,
                ..
            }
        ));
        assert!(matches!(
            outs[1],
            Outcome::Pipeline {
                result: ApplyResult::Configured,
                ..
            }
        ));
        assert!(matches!(
            outs[2],
            Outcome::Rejected(Rejection::NotFound { .. })
        ));
        assert!(matches!(outs[3], Outcome::Rejected(Rejection::Invalid(_))));
        assert_eq!(s.pipelines["a"].generation, 2);
        assert_eq!(touched.len(), 2);
    }

    #[test]
    fn same_log_gives_identical_state() {
        let log: Vec<Command> = (0..50)
            .map(|i| {
                cmd(
                    &format!("p{}", i % 7),
                    &format!("{{\"v\":{}}}", i % 3),
                    i,
                    i * 10,
                )
            })
            .collect();
        let run = || {
            let mut s = State::default();
            for (i, c) in log.iter().enumerate() {
                apply(&mut s, i as u64 + 1, c);
            }
            crate::codec::encode_state(&s).unwrap()
        };
        assert_eq!(run(), run());
    }
}
