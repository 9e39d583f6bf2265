//! The component service layer: id rules, registration and unregistration through Raft,
//! heartbeats into the liveness tracker, and views that join the replicated registry with
//! the leader's live state.

use crate::clock::now_ms;
use crate::errors::ServiceError;
use crate::liveness::{Beat, LiveEntry, LivenessHandle};
use crate::pipelines::Consistency;
use flowctl_raft::{RaftNode, ReadMeta};
use flowctl_state::components::{ComponentSpec, Register, Unregister};
use flowctl_state::{Command, ComponentId, ComponentRecord, Outcome};
use std::collections::{BTreeMap, HashMap};

/// A registered component joined with the leader's live view.
#[derive(Debug, Clone)]
pub struct ComponentView {
    pub record: ComponentRecord,
    pub live: Option<LiveEntry>,
}

/// What a component gets back when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub id: ComponentId,
    pub topics: Vec<String>,
    pub connection_info: BTreeMap<String, String>,
}

/// Picks the service id as the original did: the first non-empty of `candidates`, else a
/// generated one.
pub fn choose_id(candidates: &[&str]) -> Result<ComponentId, ServiceError> {
    match candidates.iter().find(|c| !c.is_empty()) {
        Some(c) => ComponentId::parse(c).map_err(ServiceError::BadArgument),
        None => Ok(ComponentId(format!(
            "component-{:016x}",
            rand::random::<u64>()
        ))),
    }
}

/// Where a registering component's data flows: the pipeline component it is an instance of
/// (by its id, `component` or `component-<replica>`), its topics and brokers.
pub struct DataPlane {
    pub specs: crate::spec_cache::SpecCache,
    /// `--kafka-brokers`.
    pub brokers: std::sync::Arc<Vec<String>>,
}

impl DataPlane {
    fn lookup(
        &self,
        node: &RaftNode,
        id: &str,
        hint: Option<&str>,
    ) -> Option<(Vec<String>, BTreeMap<String, String>)> {
        let docs: Vec<(String, u64, String)> = node
            .read_stale(|s| {
                s.pipelines
                    .values()
                    .map(|p| (p.name.clone(), p.generation, p.spec_yaml.clone()))
                    .collect()
            })
            .0;
        let mut docs = docs;
        // The pipeline the component names (if it does) is tried first.
        docs.sort_by_key(|(name, _, _)| Some(name.as_str()) != hint);
        for (name, generation, yaml) in docs {
            let Some(spec) = self.specs.get(&name, generation, &yaml) else {
                continue;
            };
            let found = spec
                .components()
                .find(|(_, c)| (0..c.replicas).any(|r| c.instance_id(r) == id));
            let Some((kind, c)) = found else { continue };
            let inputs: Vec<String> = c
                .inputs
                .iter()
                .map(|i| flowctl_spec::topic_name(&spec, i))
                .collect();
            let output = (kind != flowctl_spec::ComponentKind::Sink)
                .then(|| flowctl_spec::topic_name(&spec, &c.id));
            let dlq = flowctl_spec::dlq_topic_name(&spec);
            let brokers = crate::deploy::brokers_of(&spec, &self.brokers).join(",");
            let mut topics = inputs.clone();
            topics.extend(output.clone());
            topics.push(dlq.clone());
            let mut info = BTreeMap::new();
            info.insert("pipeline".to_owned(), name.clone());
            info.insert("kafka_brokers".to_owned(), brokers);
            info.insert("input_topics".to_owned(), inputs.join(","));
            if let Some(o) = output {
                info.insert("output_topic".to_owned(), o);
            }
            info.insert("dlq_topic".to_owned(), dlq);
            return Some((topics, info));
        }
        None
    }
}

pub async fn register(
    node: &RaftNode,
    data: &DataPlane,
    spec: ComponentSpec,
) -> Result<Registration, ServiceError> {
    let mut spec = spec;
    let id = spec.id.clone();
    let hint = spec.metadata.get("pipeline").cloned();
    // A component of a stored pipeline learns its topics and brokers, and its record names the
    // pipeline even when the component itself does not say (the supervisor knows it).
    let found = data.lookup(node, &id.0, hint.as_deref());
    if let Some((_, info)) = &found {
        if let Some(p) = info.get("pipeline") {
            spec.metadata
                .entry("pipeline".to_owned())
                .or_insert_with(|| p.clone());
        }
    }
    let applied = node
        .propose(Command::RegisterComponent(Register {
            spec,
            at_ms: now_ms(),
        }))
        .await?;
    match applied.outcome {
        Outcome::Component { .. } => {}
        Outcome::Rejected(r) => return Err(r.into()),
        other => return Err(ServiceError::Unexpected(format!("{other:?}"))),
    }
    let st = node.status();
    let mut info = BTreeMap::new();
    let members: Vec<String> = st.nodes.values().cloned().collect();
    info.insert("control_plane_endpoints".to_owned(), members.join(","));
    if let Some((_, addr)) = node.leader() {
        info.insert("control_plane_leader".to_owned(), addr);
    }
    let mut topics = Vec::new();
    if let Some((t, more)) = found {
        topics = t;
        info.extend(more);
    }
    Ok(Registration {
        id,
        topics,
        connection_info: info,
    })
}

pub async fn unregister(node: &RaftNode, id: &str) -> Result<(), ServiceError> {
    let id = ComponentId::parse(id).map_err(ServiceError::BadArgument)?;
    let applied = node
        .propose(Command::UnregisterComponent(Unregister {
            id,
            reason: "unregistered".into(),
        }))
        .await?;
    match applied.outcome {
        Outcome::ComponentRemoved { .. } => Ok(()),
        Outcome::Rejected(r) => Err(r.into()),
        other => Err(ServiceError::Unexpected(format!("{other:?}"))),
    }
}

/// Accepts a heartbeat. An unknown id is `NotFound`, so that a well-behaved agent
/// re-registers; the registry is checked locally and, on a miss, linearizably (the
/// registration may have committed on another node a moment ago).
pub async fn heartbeat(
    node: &RaftNode,
    live: &LivenessHandle,
    beat: Beat,
) -> Result<(), ServiceError> {
    let known = node.read_stale(|s| s.components.contains_key(&beat.id)).0
        || node
            .read_linearizable(|s| s.components.contains_key(&beat.id))
            .await?
            .0;
    if !known {
        return Err(ServiceError::NotFound(format!(
            "component {:?} is not registered; register it again",
            beat.id.0
        )));
    }
    live.beat(beat).map_err(|e| match e {
        crate::liveness::Error::Overloaded => ServiceError::Overloaded(e.to_string()),
        crate::liveness::Error::Invalid(m) => ServiceError::BadArgument(m),
        other => ServiceError::Raft(flowctl_raft::Error::Unavailable(other.to_string())),
    })
}

/// Registered components (linearizable or stale) joined with the leader's live view. When the
/// leader's view cannot be had, the live fields are left empty rather than failing the read.
pub async fn list(
    node: &RaftNode,
    live: &LivenessHandle,
    consistency: Consistency,
) -> Result<(Vec<ComponentView>, ReadMeta), ServiceError> {
    let read = |s: &flowctl_state::State| s.components.values().cloned().collect::<Vec<_>>();
    let (records, meta) = match consistency {
        Consistency::Linearizable => node.read_linearizable(read).await?,
        Consistency::Stale => node.read_stale(read),
    };
    let view = match live.leader_view(Vec::new()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "answering without live fields");
            HashMap::new()
        }
    };
    let out = records
        .into_iter()
        .map(|record| {
            let live = view.get(&record.spec.id).cloned();
            ComponentView { record, live }
        })
        .collect();
    Ok((out, meta))
}

pub async fn get(
    node: &RaftNode,
    live: &LivenessHandle,
    id: &str,
) -> Result<ComponentView, ServiceError> {
    let cid = ComponentId(id.to_owned());
    let (rec, _) = node
        .read_linearizable(|s| s.components.get(&cid).cloned())
        .await?;
    let Some(record) = rec else {
        return Err(ServiceError::NotFound(format!(
            "component {id:?} not found"
        )));
    };
    let live = live
        .leader_view(vec![cid.clone()])
        .await
        .ok()
        .and_then(|mut v| v.remove(&cid));
    Ok(ComponentView { record, live })
}
