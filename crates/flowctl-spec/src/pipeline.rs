//! [`ValidatedPipeline`]: a pipeline that passed every check, with its DAG precomputed.

use crate::model::{
    Component, ComponentId, ComponentKind, PipelineManifest, PipelineSpec, PullPolicy, Resources,
};
use crate::PipelineDoc;
use std::collections::{BTreeMap, BTreeSet};

/// A pipeline that passed [`crate::validate_pipeline`]. Holding one proves that ids are unique,
/// every input names a component, the inputs form a DAG and every other rule of the spec holds,
/// so code that takes `&ValidatedPipeline` need not check again.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedPipeline {
    doc: PipelineDoc,
    manifest: PipelineManifest,
    /// Each id's kind and index within its `spec` section.
    index: BTreeMap<ComponentId, (ComponentKind, usize)>,
    /// Ids in a topological order: every component after all of its inputs, ties in
    /// document order.
    order: Vec<ComponentId>,
    /// Each id's layer: 0 for sources, then the longest path from a source, with sinks moved
    /// to the last layer.
    layer: BTreeMap<ComponentId, usize>,
}

/// One edge of the DAG: `to` consumes what `from` produces, from `topic`.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge<'a> {
    pub from: &'a Component,
    pub to: &'a Component,
    /// The event types that flow on the edge: the intersection of `from`'s output types and
    /// `to`'s input types when both are declared, else whichever side is declared (empty when
    /// neither is).
    pub event_types: Vec<&'a str>,
    /// The Kafka topic `from` writes to; see [`topic_name`].
    pub topic: String,
}

impl ValidatedPipeline {
    /// Builds the DAG indexes. The caller has checked that ids are unique, inputs exist and
    /// there is no cycle.
    pub(crate) fn new(doc: PipelineDoc, manifest: PipelineManifest) -> Self {
        let mut index = BTreeMap::new();
        for kind in ComponentKind::ALL {
            for (i, c) in section(&manifest.spec, kind).iter().enumerate() {
                index.insert(c.id.clone(), (kind, i));
            }
        }
        let mut p = Self {
            doc,
            manifest,
            index,
            order: Vec::new(),
            layer: BTreeMap::new(),
        };
        p.order = p.compute_order();
        p.layer = p.compute_layers();
        p
    }

    fn compute_order(&self) -> Vec<ComponentId> {
        // Kahn's algorithm, always taking the first ready component in document order, so the
        // result is deterministic.
        let all: Vec<&Component> = self.components().map(|(_, c)| c).collect();
        let pos: BTreeMap<&ComponentId, usize> =
            all.iter().enumerate().map(|(i, c)| (&c.id, i)).collect();
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); all.len()];
        let mut waiting: Vec<usize> = vec![0; all.len()];
        for (j, c) in all.iter().enumerate() {
            for input in &c.inputs {
                if let Some(&i) = pos.get(input) {
                    consumers[i].push(j);
                    waiting[j] += 1;
                }
            }
        }
        let mut ready: BTreeSet<usize> = (0..all.len()).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(all.len());
        while let Some(next) = ready.pop_first() {
            order.push(all[next].id.clone());
            for &j in &consumers[next] {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    ready.insert(j);
                }
            }
        }
        debug_assert_eq!(order.len(), all.len(), "validation rejects cycles");
        order
    }

    fn compute_layers(&self) -> BTreeMap<ComponentId, usize> {
        let mut layer: BTreeMap<ComponentId, usize> = BTreeMap::new();
        for id in &self.order {
            let c = self.get(id);
            let l = c
                .inputs
                .iter()
                .filter_map(|i| layer.get(i))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            layer.insert(id.clone(), l);
        }
        // Sinks go to the rightmost layer, so every picture reads sources → sinks.
        let last = self
            .index
            .iter()
            .filter(|(_, (k, _))| *k != ComponentKind::Sink)
            .filter_map(|(id, _)| layer.get(id))
            .max()
            .map_or(0, |l| l + 1);
        for (id, (kind, _)) in &self.index {
            if *kind == ComponentKind::Sink {
                layer.insert(id.clone(), last);
            }
        }
        layer
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.manifest.metadata.name
    }

    /// The document as parsed by [`crate::parse_pipeline`], with its canonical JSON.
    pub fn doc(&self) -> &PipelineDoc {
        &self.doc
    }

    /// The whole typed document, defaults filled in.
    pub fn manifest(&self) -> &PipelineManifest {
        &self.manifest
    }

    pub fn spec(&self) -> &PipelineSpec {
        &self.manifest.spec
    }

    /// Every component with its kind: sources, then processors, then sinks, each in document
    /// order.
    pub fn components(&self) -> impl Iterator<Item = (ComponentKind, &Component)> + '_ {
        ComponentKind::ALL
            .into_iter()
            .flat_map(move |k| section(&self.manifest.spec, k).iter().map(move |c| (k, c)))
    }

    /// The component with this id.
    pub fn component(&self, id: &ComponentId) -> Option<(ComponentKind, &Component)> {
        let (kind, i) = *self.index.get(id)?;
        Some((kind, &section(&self.manifest.spec, kind)[i]))
    }

    fn get(&self, id: &ComponentId) -> &Component {
        self.component(id)
            .map(|(_, c)| c)
            .expect("ids in the indexes come from the components")
    }

    /// Every component after all of its inputs; ties in document order.
    pub fn topological_order(&self) -> impl Iterator<Item = &Component> + '_ {
        self.order.iter().map(|id| self.get(id))
    }

    /// The component's layer: 0 for sources, then the length of the longest path from a
    /// source; sinks are all in the last layer.
    pub fn layer(&self, id: &ComponentId) -> Option<usize> {
        self.layer.get(id).copied()
    }

    /// The components that list `id` among their inputs, in document order.
    pub fn downstream(&self, id: &ComponentId) -> impl Iterator<Item = &Component> + '_ {
        let id = id.clone();
        self.components()
            .map(|(_, c)| c)
            .filter(move |c| c.inputs.contains(&id))
    }

    /// Every edge, ordered by downstream component (document order) and then by its
    /// `inputs` order.
    pub fn edges(&self) -> Vec<Edge<'_>> {
        let mut edges = Vec::new();
        for (_, to) in self.components() {
            for input in &to.inputs {
                let from = self.get(input);
                edges.push(Edge {
                    from,
                    to,
                    event_types: edge_types(from, to),
                    topic: topic_name(self, &from.id),
                });
            }
        }
        edges
    }
}

fn section(spec: &PipelineSpec, kind: ComponentKind) -> &[Component] {
    match kind {
        ComponentKind::Source => &spec.sources,
        ComponentKind::Processor => &spec.processors,
        ComponentKind::Sink => &spec.sinks,
    }
}

fn edge_types<'a>(from: &'a Component, to: &'a Component) -> Vec<&'a str> {
    let out = &from.output_event_types;
    let inp = &to.input_event_types;
    match (out.is_empty(), inp.is_empty()) {
        (false, false) => out
            .iter()
            .filter(|t| inp.contains(t))
            .map(String::as_str)
            .collect(),
        (false, true) => out.iter().map(String::as_str).collect(),
        (true, _) => inp.iter().map(String::as_str).collect(),
    }
}

/// The Kafka topic that component `upstream_id` of `pipeline` writes to, and that every
/// component listing it in `inputs` reads from: `<topic_prefix>.<pipeline name>.<upstream id>`,
/// such as `flowctl.stellar-token-pipeline.ttp-processor`. `topic_prefix` comes from
/// `spec.bus` and defaults to `flowctl`.
///
/// This is the one definition of topic names; the data plane and registration replies
/// (`RegistrationAck.topic_names`, `RegisterResponse.assigned_topics`) use it too. The result
/// is always a legal Kafka topic name: the prefix is checked by validation, and pipeline names
/// and ids are DNS labels, so the whole name has at most 249 characters.
/// The pipeline's dead-letter topic: `<topic_prefix>.<pipeline>.dlq`. Validation refuses a
/// component with the id `dlq` ([`crate::RESERVED_DLQ_ID`]), so it cannot clash.
pub fn dlq_topic_name(pipeline: &ValidatedPipeline) -> String {
    format!(
        "{}.{}.dlq",
        pipeline.spec().bus.topic_prefix,
        pipeline.name()
    )
}

pub fn topic_name(pipeline: &ValidatedPipeline, upstream_id: &ComponentId) -> String {
    format!(
        "{}.{}.{}",
        pipeline.spec().bus.topic_prefix,
        pipeline.name(),
        upstream_id
    )
}

/// What applying a pipeline does to one component, with the reason for a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentChange {
    /// The component id.
    pub id: String,
    /// `start` (new), `restart` (what it runs changed) or `stop` (gone).
    pub action: &'static str,
    /// For a restart, what changed, in the order of the component's fields, such as
    /// `image a → b` or `env`; pipeline settings that every component runs with
    /// (`spec.driver`, `spec.docker.network`) come last. Empty for a start or a stop.
    pub changed: Vec<String>,
}

impl ComponentChange {
    /// The action with its reasons: `start`, `stop`, or `restart (image a → b, env)`.
    pub fn describe(&self) -> String {
        if self.changed.is_empty() {
            self.action.to_owned()
        } else {
            format!("{} ({})", self.action, self.changed.join(", "))
        }
    }
}

/// What a component runs, as compared between two versions of a pipeline: its fields with
/// spelled-out defaults dropped (`image_pull_policy: IfNotPresent` runs the same as no
/// policy, `resources: {}` the same as none), and the pipeline settings every instance runs
/// with.
fn definition(spec: &PipelineSpec, c: &Component) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if c.image_pull_policy == Some(PullPolicy::default()) {
        fields.remove("image_pull_policy");
    }
    if c.resources.as_ref().is_some_and(Resources::is_empty) {
        fields.remove("resources");
    }
    fields.insert("spec.driver".into(), spec.driver.as_str().into());
    if let Some(network) = spec.docker_network() {
        fields.insert("spec.docker.network".into(), network.into());
    }
    fields
}

/// The pipeline's fields that a component's definition includes, listed after the
/// component's own (in [`crate::validate::COMPONENT_FIELDS`]'s documented order).
const PIPELINE_REASON_FIELDS: &[&str] = &["spec.driver", "spec.docker.network"];

/// Where `field` comes in the list of reasons: the component's fields as documented, then the
/// pipeline's, then anything else.
fn reason_rank(field: &str) -> usize {
    let own = crate::validate::COMPONENT_FIELDS;
    own.iter()
        .chain(PIPELINE_REASON_FIELDS)
        .position(|f| *f == field)
        .unwrap_or(own.len() + PIPELINE_REASON_FIELDS.len())
}

/// How a changed value reads in a reason: a scalar as itself, an absent one as its default
/// (or `unset`); `None` for lists and mappings, whose change is named without values.
fn shown(field: &str, v: Option<&serde_json::Value>) -> Option<String> {
    match v {
        None if field == "image_pull_policy" => Some(PullPolicy::default().as_str().to_owned()),
        None => Some("unset".to_owned()),
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Some(v.to_string())
        }
        Some(_) => None,
    }
}

/// The reasons one component restarts: each changed field as `field old → new` (or just
/// `field` for lists and mappings), and `resources.cpu` / `resources.memory` one by one.
fn reasons(
    old: &serde_json::Map<String, serde_json::Value>,
    new: &serde_json::Map<String, serde_json::Value>,
) -> Vec<String> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort_by_key(|k| (reason_rank(k), k.as_str()));
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let (a, b) = (old.get(key), new.get(key));
        // A network that comes or goes with the docker driver is told by `spec.driver`.
        if a == b || (key == "spec.docker.network" && (a.is_none() || b.is_none())) {
            continue;
        }
        if key == "resources" {
            let empty = serde_json::Map::new();
            let part = |v: Option<&serde_json::Value>| match v {
                Some(serde_json::Value::Object(m)) => m.clone(),
                _ => empty.clone(),
            };
            let (ra, rb) = (part(a), part(b));
            for limit in ["cpu", "memory"] {
                let (x, y) = (ra.get(limit), rb.get(limit));
                if x != y {
                    let show = |v| shown(limit, v).unwrap_or_default();
                    out.push(format!("resources.{limit} {} → {}", show(x), show(y)));
                }
            }
            continue;
        }
        match (shown(key, a), shown(key, b)) {
            (Some(x), Some(y)) => out.push(format!("{key} {x} → {y}")),
            _ => out.push(key.clone()),
        }
    }
    out
}

/// What applying `new` over `old` does to each component, with the reasons for each restart
/// (see [`ComponentChange`]). A component restarts when anything it runs with changed: any of
/// its fields (`image`, `image_pull_policy`, `resources`, `command`, `env`, ...), or the
/// pipeline's `spec.driver` or `spec.docker.network`. Unchanged components are left out.
/// Sorted by id, then action.
pub fn component_change_details(
    old: Option<&ValidatedPipeline>,
    new: &ValidatedPipeline,
) -> Vec<ComponentChange> {
    type Defs = BTreeMap<String, serde_json::Map<String, serde_json::Value>>;
    let defs = |p: &ValidatedPipeline| -> Defs {
        p.components()
            .map(|(_, c)| (c.id.as_str().to_owned(), definition(p.spec(), c)))
            .collect()
    };
    let old_defs = old.map(defs).unwrap_or_default();
    let new_defs = defs(new);
    let change = |id: &String, action, changed| ComponentChange {
        id: id.clone(),
        action,
        changed,
    };
    let mut out = Vec::new();
    for (id, d) in &new_defs {
        match old_defs.get(id) {
            None => out.push(change(id, "start", Vec::new())),
            Some(o) if o != d => out.push(change(id, "restart", reasons(o, d))),
            Some(_) => {}
        }
    }
    for id in old_defs.keys() {
        if !new_defs.contains_key(id) {
            out.push(change(id, "stop", Vec::new()));
        }
    }
    out.sort_by(|a, b| (&a.id, a.action).cmp(&(&b.id, b.action)));
    out
}

/// What applying `new` over `old` does to each component: `start` (new), `restart` (its
/// definition changed), or `stop` (gone). Unchanged components are left out. Sorted by id.
/// [`component_change_details`] also says why each restart happens.
pub fn component_changes(
    old: Option<&ValidatedPipeline>,
    new: &ValidatedPipeline,
) -> Vec<(String, &'static str)> {
    component_change_details(old, new)
        .into_iter()
        .map(|c| (c.id, c.action))
        .collect()
}
