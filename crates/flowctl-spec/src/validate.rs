//! Full validation of a `flowctl/v1` Pipeline: every problem, each with its YAML path and
//! line:column.
//!
//! The document is parsed once into a located tree ([`crate::node`]); a walker then reads each
//! field by hand, so that a wrong type or an unknown field in one place does not hide problems
//! elsewhere. Field names accept their camelCase spelling (`inputEventTypes`) as an alias of
//! the snake_case one (`input_event_types`), which is canonical.

use crate::model::{
    Bus, Component, ComponentId, ComponentKind, DockerSettings, Driver, Metadata, PipelineManifest,
    PipelineSpec, PullPolicy, Resources, RestartPolicy, MAX_DOCKER_NETWORK_LEN, MAX_REPLICAS,
    MAX_TOPIC_PREFIX_LEN, MIN_REPLICAS,
};
use crate::node::{self, Key, Node, Pos, Value};
use crate::pipeline::ValidatedPipeline;
use crate::{check_name, Error, Problem};
use std::collections::{BTreeMap, BTreeSet};

/// Top-level fields of a document.
pub(crate) const ROOT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
/// Fields of `metadata`.
pub(crate) const METADATA_FIELDS: &[&str] = &["name", "labels"];
/// Fields of `spec`.
pub(crate) const SPEC_FIELDS: &[&str] =
    &["driver", "bus", "docker", "sources", "processors", "sinks"];
/// Fields of `spec.docker`.
pub(crate) const DOCKER_FIELDS: &[&str] = &["network"];
/// Fields of a component's `resources`.
pub(crate) const RESOURCES_FIELDS: &[&str] = &["cpu", "memory"];
/// Fields of `spec.bus`.
pub(crate) const BUS_FIELDS: &[&str] = &[
    "brokers",
    "topic_prefix",
    "partitions",
    "replication_factor",
];
/// Fields of a source, processor or sink.
pub(crate) const COMPONENT_FIELDS: &[&str] = &[
    "id",
    "type",
    "image",
    "image_pull_policy",
    "command",
    "args",
    "inputs",
    "input_event_types",
    "output_event_types",
    "config",
    "env",
    "replicas",
    "health_port",
    "restart_policy",
    "resources",
];

/// Parses and fully validates one Pipeline document. `file` names the source in errors.
///
/// On success the result keeps a [`crate::PipelineDoc`] built from the same parse (its
/// canonical JSON is the document's content with sorted keys). On failure the error lists every problem found, in source order.
pub fn validate_pipeline(file: &str, text: &str) -> Result<ValidatedPipeline, Error> {
    let fail = |problems: Vec<Problem>| Error {
        file: file.to_owned(),
        problems,
    };
    // First without positions, which a valid document does not need; a document with a
    // problem (or a syntax error) is parsed again with them, and walked again, so that every
    // problem is reported at its line and column exactly as a single located pass reports it.
    let walk = |root: &node::Node| {
        let mut w = Walker::default();
        let manifest = w.manifest(root);
        (manifest, w.problems)
    };
    let quick = node::parse_unlocated(text)
        .ok()
        .and_then(|root| match walk(&root) {
            (Some(manifest), problems) if problems.is_empty() => Some((root, Some(manifest))),
            _ => None,
        });
    let (root, manifest, mut problems) = match quick {
        Some((root, manifest)) => (root, manifest, Vec::new()),
        None => {
            let root = node::parse(text).map_err(|e| fail(vec![crate::syntax_problem(&e)]))?;
            let (manifest, problems) = walk(&root);
            (root, manifest, problems)
        }
    };
    // Source order; problems at the same place keep the order they were found in.
    problems.sort_by_key(|p| (p.line, p.column));
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    let Some(manifest) = manifest else {
        return Err(fail(vec![Problem {
            path: String::new(),
            line: 0,
            column: 0,
            message: "internal error: validation found no problem but built no pipeline".into(),
        }]));
    };
    // Built from the tree already parsed: a second (and third) YAML parse through
    // `parse_pipeline` cost a third of the write path's CPU.
    let doc = crate::PipelineDoc::from_parts(
        manifest.metadata.name.clone(),
        manifest.kind.clone(),
        root.value.to_json(),
        text.to_owned(),
    );
    Ok(ValidatedPipeline::new(doc, manifest))
}

/// Suggests the candidate closest to `word`: one that differs only in case, '_' and '-', or
/// else one within a small edit distance.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let w = norm(word);
    if let Some(c) = candidates.iter().find(|c| norm(c) == w) {
        return Some(c);
    }
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The snake_case spelling of a camelCase name: `inputEventTypes` → `input_event_types`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    match suggest(word, candidates) {
        Some(s) => format!("; did you mean {s:?}?"),
        None => format!("; expected one of: {}", candidates.join(", ")),
    }
}

/// `parent.key`, or `parent["key"]` when the key is not a plain word.
fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (_, false) => format!("{parent}[{key:?}]"),
        (false, true) => format!("{parent}.{key}"),
    }
}

/// The fields of one mapping, by canonical name.
struct Fields<'a> {
    path: String,
    pos: Pos,
    map: BTreeMap<&'static str, (&'a Key, &'a Node)>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Node> {
        self.map.get(name).map(|(_, n)| *n)
    }

    fn path(&self, name: &str) -> String {
        child_path(&self.path, name)
    }

    /// Where the field's key is written; for fields whose value is a mapping, which starts on
    /// the next line.
    fn key_pos(&self, name: &str) -> Option<Pos> {
        self.map.get(name).map(|(k, _)| k.pos)
    }
}

/// A component as read, with the locations that cross-component checks report at.
struct Draft {
    kind: ComponentKind,
    path: String,
    pos: Pos,
    /// The id as written (even if it is not a valid name) and where.
    id: Option<(String, Pos)>,
    /// Input ids with their positions; empty when the field is absent or malformed.
    inputs: Vec<(String, Pos)>,
    image_pos: Option<Pos>,
    health_port_pos: Option<Pos>,
    component: Option<Component>,
    replicas: u32,
    health_port: Option<u16>,
    input_types: Vec<String>,
    output_types: Vec<String>,
}

#[derive(Default)]
struct Walker {
    problems: Vec<Problem>,
}

impl Walker {
    fn err(&mut self, path: impl Into<String>, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }

    fn expected(&mut self, path: &str, node: &Node, what: &str) {
        self.err(
            path,
            node.pos,
            format!("expected {what}, found {}", node.value.describe()),
        );
    }

    /// Reads a mapping's fields: reports unknown fields (with a hint), camelCase aliases that
    /// clash with their snake_case field, and a node that is not a mapping.
    fn fields<'a>(
        &mut self,
        node: &'a Node,
        path: &str,
        known: &[&'static str],
    ) -> Option<Fields<'a>> {
        let Value::Map(entries) = &node.value else {
            self.expected(path, node, "a mapping");
            return None;
        };
        let mut map: BTreeMap<&'static str, (&'a Key, &'a Node)> = BTreeMap::new();
        for (key, value) in entries {
            let canonical = known.iter().find(|k| **k == key.name).copied().or_else(|| {
                let snake = snake_case(&key.name);
                known.iter().find(|k| **k == snake).copied()
            });
            let Some(canonical) = canonical else {
                self.err(
                    child_path(path, &key.name),
                    key.pos,
                    format!(
                        "unknown field {:?}{}",
                        key.name,
                        did_you_mean(&key.name, known)
                    ),
                );
                continue;
            };
            if let Some((other, _)) = map.get(canonical) {
                let (first, second) = if other.pos <= key.pos {
                    (*other, key)
                } else {
                    (key, *other)
                };
                self.err(
                    child_path(path, &second.name),
                    second.pos,
                    format!(
                        "{:?} and {:?} (line {}) are two spellings of {canonical:?}; keep one",
                        second.name, first.name, first.pos.line
                    ),
                );
                continue;
            }
            // A field set to null (`image:` with nothing after it) counts as absent, as the
            // schema's optional fields allow null.
            if value.value != Value::Null {
                map.insert(canonical, (key, value));
            }
        }
        Some(Fields {
            path: path.to_owned(),
            pos: node.pos,
            map,
        })
    }

    fn missing(&mut self, f: &Fields<'_>, name: &str) {
        self.err(f.path(name), f.pos, "missing required field");
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) if s.is_empty() => {
                self.err(path, node.pos, "must not be empty");
                None
            }
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.expected(path, node, "a string");
                None
            }
        }
    }

    /// A list of non-empty strings with their positions; null reads as an empty list.
    fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<(String, Pos)>> {
        let items = match &node.value {
            Value::Null => return Some(Vec::new()),
            Value::Seq(items) => items,
            Value::Str(s) => {
                self.err(
                    path,
                    node.pos,
                    format!("expected a list of strings, found a string; write [{s:?}]"),
                );
                return None;
            }
            _ => {
                self.expected(path, node, "a list of strings");
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &format!("{path}[{i}]")) {
                Some(s) => out.push((s, item.pos)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// An integer in `min..=max`.
    fn int_in(&mut self, node: &Node, path: &str, min: i128, max: i128) -> Option<i128> {
        match node.value {
            Value::Int(i) if (min..=max).contains(&i) => Some(i),
            Value::Int(i) => {
                self.err(
                    path,
                    node.pos,
                    format!("must be between {min} and {max}, got {i}"),
                );
                None
            }
            _ => {
                self.expected(path, node, "an integer");
                None
            }
        }
    }

    /// A mapping of string keys to string values; null reads as empty.
    fn string_map(&mut self, node: &Node, path: &str) -> Option<Vec<(Key, String)>> {
        let entries = match &node.value {
            Value::Null => return Some(Vec::new()),
            Value::Map(entries) => entries,
            _ => {
                self.expected(path, node, "a mapping of strings");
                return None;
            }
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (k, v) in entries {
            let p = child_path(path, &k.name);
            match &v.value {
                Value::Str(s) => out.push((k.clone(), s.clone())),
                Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Null => {
                    ok = false;
                    self.err(
                        p,
                        v.pos,
                        format!(
                            "expected a string, found {}; quote the value",
                            v.value.describe()
                        ),
                    );
                }
                Value::Seq(_) | Value::Map(_) => {
                    ok = false;
                    self.expected(&p, v, "a string");
                }
            }
        }
        ok.then_some(out)
    }

    /// One of a fixed set of strings.
    fn choice<T: Copy>(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        options: &[(&'static str, T)],
    ) -> Option<T> {
        let s = self.string(node, path)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.err(
            path,
            node.pos,
            format!("unknown {what} {s:?}{}", did_you_mean(&s, &names)),
        );
        None
    }

    fn manifest(&mut self, root: &Node) -> Option<PipelineManifest> {
        if !matches!(root.value, Value::Map(_)) {
            self.err(
                "",
                Pos { line: 1, column: 1 },
                "expected a mapping with apiVersion, kind, metadata and spec",
            );
            return None;
        }
        let f = self.fields(root, "", ROOT_FIELDS)?;
        let top = Pos { line: 1, column: 1 };
        let api_version = match f.get("apiVersion") {
            None => {
                self.err("apiVersion", top, "missing required field");
                None
            }
            Some(n) => self
                .string(n, "apiVersion")
                .and_then(|v| match crate::api_version_message(&v) {
                    Some(msg) => {
                        self.err("apiVersion", n.pos, msg);
                        None
                    }
                    None => Some(v),
                }),
        };
        let kind = match f.get("kind") {
            None => {
                self.err("kind", top, "missing required field");
                None
            }
            Some(n) => self
                .string(n, "kind")
                .and_then(|v| match crate::kind_message(&v) {
                    Some(msg) => {
                        self.err("kind", n.pos, msg);
                        None
                    }
                    None => Some(v),
                }),
        };
        let metadata = match f.get("metadata") {
            None => {
                self.err("metadata", top, "missing required field");
                None
            }
            Some(n) => self.metadata(n),
        };
        let spec = match f.get("spec") {
            None => {
                self.err("spec", top, "missing required field");
                None
            }
            Some(n) => self.spec(n),
        };
        Some(PipelineManifest {
            api_version: api_version?,
            kind: kind?,
            metadata: metadata?,
            spec: spec?,
        })
    }

    fn metadata(&mut self, node: &Node) -> Option<Metadata> {
        let f = self.fields(node, "metadata", METADATA_FIELDS)?;
        let name = match f.get("name") {
            None => {
                self.missing(&f, "name");
                None
            }
            Some(n) => self
                .string(n, "metadata.name")
                .and_then(|name| match check_name(&name) {
                    Ok(()) => Some(name),
                    Err(msg) => {
                        self.err("metadata.name", n.pos, msg);
                        None
                    }
                }),
        };
        let labels = match f.get("labels") {
            None => Some(BTreeMap::new()),
            Some(n) => self
                .string_map(n, "metadata.labels")
                .map(|kv| kv.into_iter().map(|(k, v)| (k.name, v)).collect()),
        };
        Some(Metadata {
            name: name?,
            labels: labels?,
        })
    }

    fn spec(&mut self, node: &Node) -> Option<PipelineSpec> {
        let f = self.fields(node, "spec", SPEC_FIELDS)?;
        let driver_options: Vec<(&'static str, Driver)> =
            Driver::ALL.iter().map(|d| (d.as_str(), *d)).collect();
        let driver = match f.get("driver") {
            None => Some(Driver::default()),
            Some(n) => self.choice(n, "spec.driver", "driver", &driver_options),
        };
        let bus = match f.get("bus") {
            None => Some(Bus::default()),
            Some(n) if n.value == Value::Null => Some(Bus::default()),
            Some(n) => self.bus(n),
        };
        let docker = match f.get("docker") {
            None => Some(None),
            Some(n) => {
                let settings = self.docker(n);
                match driver {
                    Some(d) if d != Driver::Docker => {
                        self.err(
                            f.path("docker"),
                            f.key_pos("docker").unwrap_or(n.pos),
                            format!(
                                "the {} driver does not use docker settings; remove spec.docker or set spec.driver to docker",
                                d.as_str()
                            ),
                        );
                        None
                    }
                    _ => settings.map(Some),
                }
            }
        };

        let mut drafts: Vec<Draft> = Vec::new();
        let mut sections_ok = true;
        for kind in ComponentKind::ALL {
            let name = kind.section();
            let path = f.path(name);
            match f.get(name) {
                None if kind == ComponentKind::Processor => {}
                None => {
                    self.err(
                        &path,
                        f.pos,
                        format!("missing required field: a pipeline needs at least one {kind}"),
                    );
                    sections_ok = false;
                }
                Some(n) => match &n.value {
                    Value::Seq(items) => {
                        if items.is_empty() && kind != ComponentKind::Processor {
                            self.err(
                                &path,
                                n.pos,
                                format!("a pipeline needs at least one {kind}"),
                            );
                            sections_ok = false;
                        }
                        for (i, item) in items.iter().enumerate() {
                            drafts.push(self.component(
                                item,
                                kind,
                                &format!("{path}[{i}]"),
                                driver,
                            ));
                        }
                    }
                    Value::Null if kind == ComponentKind::Processor => {}
                    _ => {
                        self.expected(&path, n, "a list of components");
                        sections_ok = false;
                    }
                },
            }
        }
        self.cross_checks(&drafts, driver);

        let (driver, bus, docker) = (driver?, bus?, docker?);
        if !sections_ok {
            return None;
        }
        let mut spec = PipelineSpec {
            driver,
            bus,
            docker,
            sources: Vec::new(),
            processors: Vec::new(),
            sinks: Vec::new(),
        };
        for d in drafts {
            let c = d.component?;
            match d.kind {
                ComponentKind::Source => spec.sources.push(c),
                ComponentKind::Processor => spec.processors.push(c),
                ComponentKind::Sink => spec.sinks.push(c),
            }
        }
        Some(spec)
    }

    fn bus(&mut self, node: &Node) -> Option<Bus> {
        let f = self.fields(node, "spec.bus", BUS_FIELDS)?;
        let mut ok = true;
        let mut bus = Bus::default();
        if let Some(n) = f.get("brokers") {
            let path = f.path("brokers");
            match self.strings(n, &path) {
                Some(list) => {
                    for (i, (b, pos)) in list.iter().enumerate() {
                        if let Err(msg) = check_broker(b) {
                            self.err(format!("{path}[{i}]"), *pos, msg);
                            ok = false;
                        }
                    }
                    bus.brokers = list.into_iter().map(|(b, _)| b).collect();
                }
                None => ok = false,
            }
        }
        if let Some(n) = f.get("topic_prefix") {
            let path = f.path("topic_prefix");
            match self.string(n, &path) {
                Some(p) => match check_topic_prefix(&p) {
                    Ok(()) => bus.topic_prefix = p,
                    Err(msg) => {
                        self.err(path, n.pos, msg);
                        ok = false;
                    }
                },
                None => ok = false,
            }
        }
        if let Some(n) = f.get("partitions") {
            match self.int_in(n, &f.path("partitions"), 1, i128::from(i32::MAX)) {
                Some(v) => bus.partitions = u32::try_from(v).ok(),
                None => ok = false,
            }
        }
        if let Some(n) = f.get("replication_factor") {
            match self.int_in(n, &f.path("replication_factor"), 1, i128::from(i16::MAX)) {
                Some(v) => bus.replication_factor = u16::try_from(v).ok(),
                None => ok = false,
            }
        }
        ok.then_some(bus)
    }

    fn docker(&mut self, node: &Node) -> Option<DockerSettings> {
        let f = self.fields(node, "spec.docker", DOCKER_FIELDS)?;
        let mut settings = DockerSettings::default();
        if let Some(n) = f.get("network") {
            let path = f.path("network");
            let network = self.string(n, &path)?;
            if let Err(msg) = check_docker_network(&network) {
                self.err(path, n.pos, msg);
                return None;
            }
            settings.network = network;
        }
        Some(settings)
    }

    /// A resource quantity: a string, or an unquoted number as its decimal spelling.
    fn quantity(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(_) => self.string(node, path),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(x) => Some(x.to_string()),
            _ => {
                self.expected(path, node, "a quantity such as \"500m\" or \"256Mi\"");
                None
            }
        }
    }

    /// A component's `resources`, each quantity parsed.
    fn resources(&mut self, node: &Node, path: &str, driver: Option<Driver>) -> Option<Resources> {
        let f = self.fields(node, path, RESOURCES_FIELDS)?;
        let mut ok = true;
        let mut cpu = None;
        if let Some(n) = f.get("cpu") {
            let p = f.path("cpu");
            match self.quantity(n, &p).map(|s| {
                let parsed = crate::parse_cpu(&s);
                (s, parsed)
            }) {
                None => ok = false,
                Some((_, Err(msg))) => {
                    self.err(p, n.pos, msg);
                    ok = false;
                }
                Some((s, Ok(m)))
                    if driver == Some(Driver::Docker) && m < crate::MIN_DOCKER_CPU_MILLIS =>
                {
                    self.err(
                        p,
                        n.pos,
                        format!(
                            "{s:?} is below {}m, the least CPU limit of the docker driver (Linux needs a quota of at least 1ms in each 100ms)",
                            crate::MIN_DOCKER_CPU_MILLIS
                        ),
                    );
                    ok = false;
                }
                Some((s, Ok(m))) => cpu = Some((s, m)),
            }
        }
        let mut memory = None;
        if let Some(n) = f.get("memory") {
            let p = f.path("memory");
            match self.quantity(n, &p).map(|s| {
                let parsed = crate::parse_memory(&s);
                (s, parsed)
            }) {
                None => ok = false,
                Some((_, Err(msg))) => {
                    self.err(p, n.pos, msg);
                    ok = false;
                }
                Some((s, Ok(b))) => memory = Some((s, b)),
            }
        }
        ok.then(|| Resources::from_parsed(cpu, memory))
    }

    /// Reads one component and checks what can be checked without the others.
    fn component(
        &mut self,
        node: &Node,
        kind: ComponentKind,
        path: &str,
        driver: Option<Driver>,
    ) -> Draft {
        let mut d = Draft {
            kind,
            path: path.to_owned(),
            pos: node.pos,
            id: None,
            inputs: Vec::new(),
            image_pos: None,
            health_port_pos: None,
            component: None,
            replicas: MIN_REPLICAS,
            health_port: None,
            input_types: Vec::new(),
            output_types: Vec::new(),
        };
        let Some(f) = self.fields(node, path, COMPONENT_FIELDS) else {
            return d;
        };
        let mut ok = true;

        match f.get("id") {
            None => {
                self.missing(&f, "id");
                ok = false;
            }
            Some(n) => match self.string(n, &f.path("id")) {
                Some(id) => {
                    if let Err(msg) = check_name(&id) {
                        self.err(f.path("id"), n.pos, msg);
                        ok = false;
                    }
                    // Kept even when invalid, so that inputs naming it are not also reported
                    // as unknown.
                    d.id = Some((id, n.pos));
                }
                None => ok = false,
            },
        }
        let component_type = match f.get("type") {
            None => None,
            Some(n) => {
                let t = self.string(n, &f.path("type"));
                ok &= t.is_some();
                t
            }
        };
        let image = match f.get("image") {
            None => None,
            Some(n) => {
                d.image_pos = Some(n.pos);
                let i = self.string(n, &f.path("image"));
                ok &= i.is_some();
                i
            }
        };
        let command = match f.get("command") {
            None => None,
            Some(n) => {
                let p = f.path("command");
                match self.strings(n, &p) {
                    Some(c) if c.is_empty() => {
                        self.err(p, n.pos, "must name a program to run");
                        ok = false;
                        None
                    }
                    Some(c) => Some(c.into_iter().map(|(s, _)| s).collect::<Vec<_>>()),
                    None => {
                        ok = false;
                        None
                    }
                }
            }
        };
        // One way to start the component that the driver can use: a program (`command`)
        // for the process driver; an image for the container drivers, where `command` may
        // override the image's entrypoint.
        let image_given = f.get("image").is_some();
        let command_given = f.get("command").is_some();
        match (command_given, image_given) {
            (true, true) if driver.is_some_and(Driver::runs_images) => {}
            (true, true) => {
                self.err(
                    path,
                    node.pos,
                    "set exactly one of command and image, not both",
                );
                ok = false;
            }
            (false, false) => {
                self.err(
                    path,
                    node.pos,
                    "set exactly one of command (run a program) and image (run a container)",
                );
                ok = false;
            }
            (false, true) if driver == Some(Driver::Process) => {
                self.err(
                    f.path("image"),
                    d.image_pos.unwrap_or(node.pos),
                    "the process driver runs programs and assumes no container runtime; \
                     use command, or set spec.driver to docker or kubernetes",
                );
                ok = false;
            }
            (true, false) if driver.is_some_and(Driver::runs_images) => {
                let driver = driver.map_or("", Driver::as_str);
                self.err(
                    f.path("command"),
                    f.get("command").map_or(node.pos, |n| n.pos),
                    format!(
                        "the {driver} driver runs container images; use image (command then overrides its entrypoint)"
                    ),
                );
                ok = false;
            }
            _ => {}
        }

        let pull_options: Vec<(&'static str, PullPolicy)> =
            PullPolicy::ALL.iter().map(|p| (p.as_str(), *p)).collect();
        let image_pull_policy = match f.get("image_pull_policy") {
            None => None,
            Some(n) => {
                let p = f.path("image_pull_policy");
                let policy = self.choice(n, &p, "image pull policy", &pull_options);
                ok &= policy.is_some();
                if driver == Some(Driver::Process) {
                    self.err(
                        p,
                        n.pos,
                        "the process driver runs programs and pulls no images; \
                         image_pull_policy needs a container driver (spec.driver docker or kubernetes)",
                    );
                    ok = false;
                }
                policy
            }
        };

        let args = match f.get("args") {
            None => Vec::new(),
            Some(n) => match self.strings(n, &f.path("args")) {
                Some(a) => a.into_iter().map(|(s, _)| s).collect(),
                None => {
                    ok = false;
                    Vec::new()
                }
            },
        };

        let mut inputs_ok = true;
        if let Some(n) = f.get("inputs") {
            let p = f.path("inputs");
            match self.strings(n, &p) {
                Some(list) => {
                    if kind == ComponentKind::Source && !list.is_empty() {
                        self.err(
                            &p,
                            n.pos,
                            "a source has no inputs; declare it as a processor to consume from other components",
                        );
                        ok = false;
                    }
                    d.inputs = list;
                }
                None => inputs_ok = false,
            }
        }
        ok &= inputs_ok;
        if kind != ComponentKind::Source && d.inputs.is_empty() && inputs_ok {
            let pos = f.get("inputs").map_or(node.pos, |n| n.pos);
            self.err(
                f.path("inputs"),
                pos,
                format!("a {kind} needs at least one input"),
            );
            ok = false;
        }

        for (field, not_for) in [
            ("input_event_types", ComponentKind::Source),
            ("output_event_types", ComponentKind::Sink),
        ] {
            let Some(n) = f.get(field) else { continue };
            let p = f.path(field);
            let Some(list) = self.strings(n, &p) else {
                ok = false;
                continue;
            };
            if kind == not_for && !list.is_empty() {
                let why = if kind == ComponentKind::Source {
                    "a source consumes nothing"
                } else {
                    "a sink produces nothing"
                };
                self.err(&p, n.pos, format!("not allowed: {why}"));
                ok = false;
            }
            for (i, (t, pos)) in list.iter().enumerate() {
                if t.chars().any(char::is_whitespace) {
                    self.err(
                        format!("{p}[{i}]"),
                        *pos,
                        format!("event type {t:?} must not contain whitespace"),
                    );
                    ok = false;
                }
            }
            let list = list.into_iter().map(|(t, _)| t).collect();
            if field == "input_event_types" {
                d.input_types = list;
            } else {
                d.output_types = list;
            }
        }

        let config = match f.get("config") {
            None => serde_json::Map::new(),
            Some(n) => match &n.value {
                Value::Null => serde_json::Map::new(),
                Value::Map(_) => match n.value.to_json() {
                    serde_json::Value::Object(m) => {
                        let p = f.path("config");
                        for k in m.keys() {
                            let var = crate::config_env_name(k);
                            if crate::is_loader_variable(&var) {
                                self.err(
                                    child_path(&p, k),
                                    n.pos,
                                    format!(
                                        "becomes the variable {var}, which changes how the dynamic loader starts programs, and is not allowed"
                                    ),
                                );
                                ok = false;
                            }
                        }
                        m
                    }
                    _ => serde_json::Map::new(),
                },
                _ => {
                    self.expected(&f.path("config"), n, "a mapping");
                    ok = false;
                    serde_json::Map::new()
                }
            },
        };

        let mut env = BTreeMap::new();
        if let Some(n) = f.get("env") {
            let p = f.path("env");
            match self.string_map(n, &p) {
                Some(kv) => {
                    for (k, v) in kv {
                        let problem = if !is_env_name(&k.name) {
                            Some("is not an environment variable name (letters, digits and '_', not starting with a digit)")
                        } else if crate::is_loader_variable(&k.name) {
                            Some("changes how the dynamic loader starts programs, and is not allowed")
                        } else {
                            None
                        };
                        if let Some(problem) = problem {
                            self.err(
                                child_path(&p, &k.name),
                                k.pos,
                                format!("{:?} {problem}", k.name),
                            );
                            ok = false;
                        }
                        env.insert(k.name, v);
                    }
                }
                None => ok = false,
            }
        }

        if let Some(n) = f.get("replicas") {
            match self.int_in(
                n,
                &f.path("replicas"),
                MIN_REPLICAS.into(),
                MAX_REPLICAS.into(),
            ) {
                Some(r) => d.replicas = u32::try_from(r).unwrap_or(MIN_REPLICAS),
                None => ok = false,
            }
        }
        if let Some(n) = f.get("health_port") {
            let p = f.path("health_port");
            d.health_port_pos = Some(n.pos);
            match self.int_in(n, &p, 1, 65535) {
                Some(port) => {
                    let last = port + i128::from(d.replicas) - 1;
                    if last > 65535 {
                        self.err(
                            p,
                            n.pos,
                            format!(
                                "{} instances need ports {port} to {last}, past 65535",
                                d.replicas
                            ),
                        );
                        ok = false;
                    } else {
                        d.health_port = u16::try_from(port).ok();
                    }
                }
                None => ok = false,
            }
        }
        let restart_options: Vec<(&'static str, RestartPolicy)> = RestartPolicy::ALL
            .iter()
            .map(|r| (r.as_str(), *r))
            .collect();
        let restart_policy = match f.get("restart_policy") {
            None => Some(RestartPolicy::default()),
            Some(n) => self.choice(
                n,
                &f.path("restart_policy"),
                "restart policy",
                &restart_options,
            ),
        };

        let resources = match f.get("resources") {
            None => None,
            Some(n) => {
                let p = f.path("resources");
                let r = self.resources(n, &p, driver);
                ok &= r.is_some();
                if driver == Some(Driver::Process) {
                    self.err(
                        p,
                        f.key_pos("resources").unwrap_or(n.pos),
                        "the process driver does not limit CPU or memory; \
                         resources need a container driver (spec.driver docker or kubernetes)",
                    );
                    ok = false;
                }
                r
            }
        };

        if let (true, Some((id, _)), Some(restart_policy)) = (ok, &d.id, restart_policy) {
            d.component = Some(Component {
                id: ComponentId::new(id.clone()),
                component_type,
                image,
                image_pull_policy,
                command: command.unwrap_or_default(),
                args,
                inputs: d
                    .inputs
                    .iter()
                    .map(|(i, _)| ComponentId::new(i.clone()))
                    .collect(),
                input_event_types: d.input_types.clone(),
                output_event_types: d.output_types.clone(),
                config,
                env,
                replicas: d.replicas,
                health_port: d.health_port,
                restart_policy,
                resources,
            });
        }
        d
    }

    /// Checks that span components: duplicate ids, inputs, event types, cycles and ports.
    fn cross_checks(&mut self, drafts: &[Draft], driver: Option<Driver>) {
        // Ids: the first declaration wins, later ones are duplicates.
        let mut by_id: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, d) in drafts.iter().enumerate() {
            let Some((id, pos)) = &d.id else { continue };
            if id == crate::RESERVED_DLQ_ID {
                self.err(
                    format!("{}.id", d.path),
                    *pos,
                    format!(
                        "{id:?} is reserved: the pipeline's dead-letter topic is named after it"
                    ),
                );
            }
            if let Some(&first) = by_id.get(id.as_str()) {
                let other = &drafts[first];
                self.err(
                    format!("{}.id", d.path),
                    *pos,
                    format!(
                        "duplicate id {id:?}: {} (line {}) has it too",
                        other.path, other.pos.line
                    ),
                );
            } else {
                by_id.insert(id, i);
            }
        }
        let ids: Vec<&str> = by_id.keys().copied().collect();

        // Edges, as (upstream, downstream, position in the downstream's inputs).
        let mut upstreams: Vec<Vec<(usize, Pos, usize)>> = vec![Vec::new(); drafts.len()];
        for (j, d) in drafts.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for (k, (input, pos)) in d.inputs.iter().enumerate() {
                let p = format!("{}.inputs[{k}]", d.path);
                if !seen.insert(input.as_str()) {
                    self.err(p, *pos, format!("{input:?} is listed twice"));
                    continue;
                }
                let Some(&i) = by_id.get(input.as_str()) else {
                    let hint = match suggest(input, &ids) {
                        Some(s) => format!("; did you mean {s:?}?"),
                        None => String::new(),
                    };
                    self.err(
                        p,
                        *pos,
                        format!("unknown input {input:?}: no component has this id{hint}"),
                    );
                    continue;
                };
                let up = &drafts[i];
                if up.kind == ComponentKind::Sink {
                    self.err(
                        p,
                        *pos,
                        format!("{input:?} is a sink, which produces no events to consume"),
                    );
                    continue;
                }
                if d.kind == ComponentKind::Source {
                    continue; // already reported: a source has no inputs
                }
                if !up.output_types.is_empty() && !d.input_types.is_empty() {
                    let common = up.output_types.iter().any(|t| d.input_types.contains(t));
                    if !common {
                        let own = d.id.as_ref().map_or("this component", |(s, _)| s.as_str());
                        self.err(
                            p,
                            *pos,
                            format!(
                                "no event type in common: {input:?} outputs [{}] but {own:?} accepts [{}]",
                                up.output_types.join(", "),
                                d.input_types.join(", ")
                            ),
                        );
                    }
                }
                upstreams[j].push((i, *pos, k));
            }
        }
        self.cycles(drafts, &upstreams);
        if driver == Some(Driver::Process) {
            self.port_clashes(drafts);
        }
    }

    /// Reports each cycle once, at the `inputs` entry of its first component in document order
    /// that closes it, as `a -> b -> a` in the direction events flow.
    fn cycles(&mut self, drafts: &[Draft], upstreams: &[Vec<(usize, Pos, usize)>]) {
        // Kahn's algorithm removes everything not on or behind a cycle.
        let n = drafts.len();
        let mut waiting: Vec<usize> = upstreams.iter().map(Vec::len).collect();
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (j, ups) in upstreams.iter().enumerate() {
            for (i, _, _) in ups {
                consumers[*i].push(j);
            }
        }
        let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut removed = vec![false; n];
        while let Some(i) = ready.pop() {
            removed[i] = true;
            for &j in &consumers[i] {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    ready.push(j);
                }
            }
        }
        // Every remaining component has a remaining upstream, so walking upstream from one
        // must come back to a component already on the walk.
        let mut reported = vec![false; n];
        for start in 0..n {
            if removed[start] || reported[start] {
                continue;
            }
            let mut walk = vec![start];
            let mut on_walk = BTreeMap::from([(start, 0usize)]);
            let cycle = loop {
                let cur = *walk.last().expect("the walk starts non-empty");
                let Some(&(up, _, _)) = upstreams[cur].iter().find(|(u, _, _)| !removed[*u]) else {
                    break None;
                };
                if reported[up] {
                    break None;
                }
                if let Some(&at) = on_walk.get(&up) {
                    break Some(walk[at..].to_vec());
                }
                on_walk.insert(up, walk.len());
                walk.push(up);
            };
            for &c in &walk {
                reported[c] = true;
            }
            let Some(cycle) = cycle else { continue };
            // `cycle` runs upstream: each member's upstream is the next one. Report at the
            // member first in the document, naming the members downstream from it.
            let first = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| **c)
                .map_or(0, |(k, _)| k);
            let m = cycle.len();
            let owner = cycle[first];
            let upstream = cycle[(first + 1) % m];
            // Step s goes s members downstream from `owner`; step m is `owner` again.
            let names: Vec<&str> = (0..=m)
                .map(|s| cycle[(first + m - s % m) % m])
                .map(|c| drafts[c].id.as_ref().map_or("?", |(s, _)| s.as_str()))
                .collect();
            let (pos, k) = upstreams[owner]
                .iter()
                .find(|(u, _, _)| *u == upstream)
                .map_or((drafts[owner].pos, 0), |(_, p, k)| (*p, *k));
            self.err(
                format!("{}.inputs[{k}]", drafts[owner].path),
                pos,
                format!("cycle: {}", names.join(" -> ")),
            );
        }
    }

    /// Under the process driver every instance shares one host, so the health ports of all
    /// instances (`health_port + i`) must differ.
    fn port_clashes(&mut self, drafts: &[Draft]) {
        let mut claimed: Vec<(usize, u32, u32)> = Vec::new(); // (draft, first port, last port)
        for (j, d) in drafts.iter().enumerate() {
            let (Some(port), Some(pos)) = (d.health_port, d.health_port_pos) else {
                continue;
            };
            let (lo, hi) = (u32::from(port), u32::from(port) + d.replicas - 1);
            if let Some(&(i, olo, ohi)) = claimed.iter().find(|(_, a, b)| lo <= *b && *a <= hi) {
                let other = &drafts[i];
                let name = other.id.as_ref().map_or("?", |(s, _)| s.as_str());
                let clash = lo.max(olo);
                let ports = |a: u32, b: u32| {
                    if a == b {
                        format!("port {a}")
                    } else {
                        format!("ports {a}-{b}")
                    }
                };
                self.err(
                    format!("{}.health_port", d.path),
                    pos,
                    format!(
                        "health port clash on {clash}: this component's instances use {}, and {name:?} ({}, line {}) uses {}; the process driver runs every instance on one host",
                        ports(lo, hi),
                        other.path,
                        other.pos.line,
                        ports(olo, ohi)
                    ),
                );
                continue;
            }
            claimed.push((j, lo, hi));
        }
    }
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_broker(b: &str) -> Result<(), String> {
    let Some((host, port)) = b.rsplit_once(':') else {
        return Err(format!("{b:?} must be host:port"));
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("{b:?} must be host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{b:?} has no valid port (1 to 65535)")),
    }
}

fn check_topic_prefix(p: &str) -> Result<(), String> {
    if p.len() > MAX_TOPIC_PREFIX_LEN {
        return Err(format!(
            "is longer than {MAX_TOPIC_PREFIX_LEN} characters, which would make topic names too long for Kafka"
        ));
    }
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !p.chars().all(legal) || p.starts_with('.') || p.ends_with('.') {
        return Err(format!(
            "{p:?} may hold only letters, digits, '.', '_' and '-', and must not start or end with '.'"
        ));
    }
    Ok(())
}

/// Checks a Docker network name: a letter or digit, then letters, digits, '_', '.' and '-',
/// at most [`MAX_DOCKER_NETWORK_LEN`] characters.
fn check_docker_network(n: &str) -> Result<(), String> {
    if n.len() > MAX_DOCKER_NETWORK_LEN {
        return Err(format!(
            "{n:?} is longer than {MAX_DOCKER_NETWORK_LEN} characters"
        ));
    }
    let mut chars = n.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "{n:?} is not a Docker network name: letters, digits, '_', '.' and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_prefer_same_word_then_small_edits() {
        let known = ["inputs", "input_event_types", "image"];
        assert_eq!(
            suggest("InputEventTypes", &known),
            Some("input_event_types")
        );
        assert_eq!(
            suggest("input-event-types", &known),
            Some("input_event_types")
        );
        assert_eq!(suggest("imagee", &known), Some("image"));
        assert_eq!(suggest("input", &known), Some("inputs"));
        assert_eq!(suggest("zzz", &known), None);
    }

    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn camel_case_maps_to_snake_case() {
        assert_eq!(snake_case("inputEventTypes"), "input_event_types");
        assert_eq!(snake_case("health_port"), "health_port");
    }

    #[test]
    fn brokers_and_prefixes_are_checked() {
        assert!(check_broker("kafka:9092").is_ok());
        assert!(check_broker("[::1]:9092").is_ok());
        assert!(check_broker("kafka").is_err());
        assert!(check_broker("kafka:0").is_err());
        assert!(check_broker(":9092").is_err());
        assert!(check_topic_prefix("flowctl").is_ok());
        assert!(check_topic_prefix("my_org.flowctl").is_ok());
        assert!(check_topic_prefix(".x").is_err());
        assert!(check_topic_prefix("a b").is_err());
        assert!(check_topic_prefix(&"a".repeat(MAX_TOPIC_PREFIX_LEN + 1)).is_err());
    }

    #[test]
    fn docker_network_names_are_checked() {
        for ok in ["host", "bridge", "none", "flowctl_net", "my.net-1", "0net"] {
            assert_eq!(check_docker_network(ok), Ok(()), "{ok}");
        }
        assert!(check_docker_network(&"n".repeat(MAX_DOCKER_NETWORK_LEN)).is_ok());
        for bad in [
            "-net",
            "_net",
            ".net",
            "my net",
            "container:abc",
            "né",
            "a/b",
        ] {
            assert!(check_docker_network(bad).is_err(), "{bad}");
        }
        let long = check_docker_network(&"n".repeat(MAX_DOCKER_NETWORK_LEN + 1)).unwrap_err();
        assert!(long.contains("longer than 64"), "{long}");
    }
}
