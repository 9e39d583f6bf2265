//! The pipeline service layer: validate, build a command, propose, and read.

use crate::clock::now_ms;
use crate::errors::ServiceError;
use flowctl_raft::{RaftNode, ReadMeta};
use flowctl_state::pipelines::{ApplyPipeline, DeletePipeline};
use flowctl_state::{ApplyResult, Command, Outcome, PipelineId, PipelineRecord};

/// The read path a request's `consistency` field asks for (linearizable unless stale).
pub(crate) fn consistency_of(v: i32) -> Consistency {
    match flowctl_proto::admin::v1::Consistency::try_from(v) {
        Ok(flowctl_proto::admin::v1::Consistency::Stale) => Consistency::Stale,
        _ => Consistency::Linearizable,
    }
}

/// Which read path to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Stale,
}

/// What an apply did, or (dry run) would do.
pub struct ApplyReport {
    /// The stored record: after the apply, or as it was (dry run; `None` if new).
    pub record: Option<PipelineRecord>,
    pub result: ApplyResult,
    pub applied_index: u64,
    /// Per component: start, restart (with what changed) or stop.
    pub changes: Vec<flowctl_spec::ComponentChange>,
    /// The document stored before this apply (empty if none).
    pub stored_yaml: String,
}

/// Validates a document fully and stores it (unless `dry_run`). The proposer stamps the time
/// and a candidate id; the state machine keeps the existing id on re-apply.
/// How an apply stores.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Validate and report what would change, storing nothing.
    pub dry_run: bool,
    /// Accept event types that are not registered schema subjects.
    pub allow_unregistered_types: bool,
    /// Store only if the pipeline is at this generation (0: does not exist). Checked where
    /// the write applies, so that a retried request still gets its first answer.
    pub if_generation: Option<u64>,
}

pub async fn apply(
    node: &RaftNode,
    specs: &crate::spec_cache::SpecCache,
    file: &str,
    yaml: &str,
    opts: ApplyOptions,
) -> Result<ApplyReport, ServiceError> {
    let ApplyOptions {
        dry_run,
        allow_unregistered_types,
        if_generation,
    } = opts;
    // The same full validation as `flowctl validate`; the node that receives the request runs
    // it, so nothing unvalidated reaches the log.
    let started = std::time::Instant::now();
    let validated = flowctl_spec::validate_pipeline(file, yaml)?;
    flowctl_store::record_stage("validate", started.elapsed());
    if !allow_unregistered_types {
        check_event_types_registered(node, &validated).await?;
    }
    let doc = validated.doc();
    let stored = node.read_stale(|s| s.pipelines.get(doc.name()).cloned()).0;
    let old = stored
        .as_ref()
        .and_then(|r| specs.get(&r.name, r.generation, &r.spec_yaml));
    let changes = flowctl_spec::component_change_details(old.as_deref(), &validated);
    let stored_yaml = stored
        .as_ref()
        .map(|r| r.spec_yaml.clone())
        .unwrap_or_default();
    if dry_run {
        if let Some(want) = if_generation {
            let have = stored.as_ref().map_or(0, |r| r.generation);
            if have != want {
                return Err(ServiceError::from(flowctl_state::Rejection::Conflict(
                    format!(
                        "pipeline {} is at generation {have}, not {want} (--if-generation)",
                        doc.name()
                    ),
                )));
            }
        }
        let result = match &stored {
            None => ApplyResult::Created,
            Some(r) if r.canonical == doc.canonical_json() => ApplyResult::Unchanged,
            Some(_) => ApplyResult::Configured,
        };
        return Ok(ApplyReport {
            record: stored,
            result,
            applied_index: 0,
            changes,
            stored_yaml,
        });
    }
    let cmd = Command::ApplyPipeline(ApplyPipeline {
        name: doc.name().to_owned(),
        id_if_new: PipelineId::from_random(rand::random()),
        spec_yaml: yaml.to_owned(),
        canonical: doc.canonical_json(),
        at_ms: now_ms(),
        if_generation,
    });
    let applied = node.propose(cmd).await?;
    match applied.outcome {
        Outcome::Pipeline { record, result } => {
            specs.insert(
                &record.name,
                record.generation,
                std::sync::Arc::new(validated),
            );
            Ok(ApplyReport {
                record: Some(record),
                changes: if result == ApplyResult::Unchanged {
                    Vec::new()
                } else {
                    changes
                },
                result,
                applied_index: applied.log_index,
                stored_yaml,
            })
        }
        Outcome::Rejected(r) => Err(r.into()),
        other => Err(ServiceError::Unexpected(format!("{other:?}"))),
    }
}

/// Every event type the pipeline declares must be a live subject of the schema registry.
async fn check_event_types_registered(
    node: &RaftNode,
    p: &flowctl_spec::ValidatedPipeline,
) -> Result<(), ServiceError> {
    let mut types = std::collections::BTreeSet::new();
    for (_, c) in p.components() {
        types.extend(c.input_event_types.iter().map(ToString::to_string));
        types.extend(c.output_event_types.iter().map(ToString::to_string));
    }
    if types.is_empty() {
        return Ok(());
    }
    let (missing, _) = node
        .read_linearizable(|s| {
            types
                .iter()
                .filter(|t| {
                    s.schemas
                        .subjects
                        .get(t.as_str())
                        .is_none_or(|x| x.latest().is_none())
                })
                .cloned()
                .collect::<Vec<_>>()
        })
        .await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(ServiceError::FailedPrecondition(format!(
        "pipeline {} declares event types that are not registered schemas: {} \
         (push them with `flowctl schemas push FILE.proto --package PKG`, or apply with \
         --allow-unregistered-types)",
        p.name(),
        missing.join(", ")
    )))
}

pub async fn delete(node: &RaftNode, name: &str) -> Result<u64, ServiceError> {
    flowctl_spec::check_name(name)
        .map_err(|m| ServiceError::BadArgument(format!("pipeline name: {m}")))?;
    let applied = node
        .propose(Command::DeletePipeline(DeletePipeline {
            name: name.to_owned(),
        }))
        .await?;
    match applied.outcome {
        Outcome::PipelineDeleted { .. } => Ok(applied.log_index),
        Outcome::Rejected(r) => Err(r.into()),
        other => Err(ServiceError::Unexpected(format!("{other:?}"))),
    }
}

/// Reads with the requested consistency (shared by every service's read RPCs).
pub(crate) async fn read<T>(
    node: &RaftNode,
    consistency: Consistency,
    f: impl FnOnce(&flowctl_state::State) -> T,
) -> Result<(T, ReadMeta), ServiceError> {
    match consistency {
        Consistency::Linearizable => Ok(node.read_linearizable(f).await?),
        Consistency::Stale => Ok(node.read_stale(f)),
    }
}

pub async fn get(
    node: &RaftNode,
    name: &str,
    consistency: Consistency,
) -> Result<(PipelineRecord, ReadMeta), ServiceError> {
    let (rec, meta) = read(node, consistency, |s| s.pipelines.get(name).cloned()).await?;
    match rec {
        Some(r) => Ok((r, meta)),
        None => Err(ServiceError::NotFound(format!(
            "pipeline {name:?} not found"
        ))),
    }
}

pub async fn list(
    node: &RaftNode,
    consistency: Consistency,
) -> Result<(Vec<PipelineRecord>, ReadMeta), ServiceError> {
    read(node, consistency, |s| {
        s.pipelines.values().cloned().collect()
    })
    .await
}
