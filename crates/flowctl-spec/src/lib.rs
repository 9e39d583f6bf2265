//! `flowctl/v1` Pipeline documents.
//!
//! This crate turns YAML text into pipelines, at two levels:
//!
//! - [`parse_pipeline`] checks YAML syntax, `apiVersion`, `kind` and `metadata.name`, and gives a
//!   [`PipelineDoc`]: the form the control plane stores.
//! - [`validate_pipeline`] checks the whole spec (every field, the DAG of `inputs`, event types,
//!   drivers, ports) and gives a [`ValidatedPipeline`], the only input of the [`graph`]
//!   renderers and of [`topic_name`].
//!
//! Both report every problem at once, each with the file, YAML path, line and column.
//! [`pipeline_schema`] publishes the spec as a JSON Schema generated from the [`model`] types.
//! The crate does no I/O beyond the text it is given and knows nothing of Raft or the server.
//!
//! The YAML parser is `serde-saphyr` (the maintained successor of the deprecated
//! `serde_yaml`), chosen because its errors and `Spanned` values carry line:column.
//!
//! Invariant: [`PipelineDoc::canonical_json`] is a deterministic function of the document's
//! content (object keys sorted), so two documents that differ only in formatting, key order or
//! comments compare equal. The replicated state uses it to decide whether a re-apply changed
//! anything.

pub mod graph;
pub mod model;
mod node;
mod pipeline;
mod quantity;
mod schema;
mod validate;

pub use model::{
    instance_id, Bus, Component, ComponentId, ComponentKind, DockerSettings, Driver, Metadata,
    PipelineManifest, PipelineSpec, PullPolicy, Resources, RestartPolicy,
};
pub use pipeline::{
    component_change_details, component_changes, dlq_topic_name, topic_name, ComponentChange, Edge,
    ValidatedPipeline,
};
pub use quantity::{parse_cpu, parse_memory, MIN_DOCKER_CPU_MILLIS, MIN_MEMORY_BYTES};

/// The component id that no component may have: `<prefix>.<pipeline>.dlq` is the
/// pipeline's dead-letter topic.
pub const RESERVED_DLQ_ID: &str = "dlq";
pub use schema::pipeline_schema;
pub use validate::validate_pipeline;

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::fmt;

/// The only API version this release understands.
pub const API_VERSION: &str = "flowctl/v1";
/// The kinds of document this release understands.
pub const KNOWN_KINDS: &[&str] = &["Pipeline"];
/// The longest accepted `metadata.name`, as for a Kubernetes or DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// One problem found in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The YAML path of the field, such as `metadata.name`; empty for syntax errors.
    pub path: String,
    /// 1-based line, or 0 when unknown.
    pub line: u64,
    /// 1-based column, or 0 when unknown.
    pub column: u64,
    pub message: String,
}

/// Everything wrong with a document, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl Error {
    /// One line per problem, `file:line:col: path: message` (without `:line:col` when the
    /// location is unknown, without `path: ` for syntax errors), as compilers print them.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| {
                let mut s = self.file.clone();
                if p.line > 0 {
                    s.push_str(&format!(":{}:{}", p.line, p.column));
                }
                if p.path.is_empty() {
                    s.push_str(&format!(": {}", p.message));
                } else {
                    s.push_str(&format!(": {}: {}", p.path, p.message));
                }
                s
            })
            .collect()
    }
}

impl fmt::Display for Error {
    /// Every problem on one line, separated by "; ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("; "))
    }
}

/// A document that passed the checks of this crate.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineDoc {
    name: String,
    kind: String,
    value: serde_json::Value,
    source: String,
}

impl PipelineDoc {
    pub(crate) fn from_parts(
        name: String,
        kind: String,
        value: serde_json::Value,
        source: String,
    ) -> Self {
        PipelineDoc {
            name,
            kind,
            value,
            source,
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The YAML text as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The document's content as JSON with sorted keys.
    pub fn canonical_json(&self) -> String {
        // serde_json's Map is a BTreeMap without the preserve_order feature, so keys come out
        // sorted and the output is canonical.
        self.value.to_string()
    }
}

#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    metadata: Option<Spanned<HeaderMetadata>>,
}

#[derive(Deserialize)]
struct HeaderMetadata {
    name: Option<Spanned<String>>,
}

/// Parses and checks one document. `file` names the source in error messages.
pub fn parse_pipeline(file: &str, text: &str) -> Result<PipelineDoc, Error> {
    let fail = |problems: Vec<Problem>| Error {
        file: file.to_owned(),
        problems,
    };
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| fail(vec![syntax_problem(&e)]))?;
    if !value.is_object() {
        return Err(fail(vec![Problem {
            path: String::new(),
            line: 1,
            column: 1,
            message: "expected a mapping with apiVersion, kind and metadata".into(),
        }]));
    }
    let header: Header =
        serde_saphyr::from_str(text).map_err(|e| fail(vec![syntax_problem(&e)]))?;

    let mut problems = Vec::new();
    match &header.api_version {
        None => problems.push(missing("apiVersion")),
        Some(v) => {
            if let Some(msg) = api_version_message(&v.value) {
                problems.push(at("apiVersion", v, msg));
            }
        }
    }
    match &header.kind {
        None => problems.push(missing("kind")),
        Some(k) => {
            if let Some(msg) = kind_message(&k.value) {
                problems.push(at("kind", k, msg));
            }
        }
    }
    let name = match header.metadata.as_ref().map(|m| &m.value.name) {
        None => {
            problems.push(missing("metadata"));
            None
        }
        Some(None) => {
            let m = header.metadata.as_ref().expect("checked above");
            problems.push(at("metadata.name", m, "missing required field".into()));
            None
        }
        Some(Some(n)) => {
            if let Err(msg) = check_name(&n.value) {
                problems.push(at("metadata.name", n, msg));
                None
            } else {
                Some(n.value.clone())
            }
        }
    };
    match (name, problems.is_empty()) {
        (Some(name), true) => Ok(PipelineDoc {
            name,
            kind: header.kind.map(|k| k.value).unwrap_or_default(),
            value,
            source: text.to_owned(),
        }),
        _ => Err(fail(problems)),
    }
}

/// The environment variable a component's `config` key becomes: UPPER_SNAKE, with a `_` at
/// each camelCase hump and for every run of other characters (`startLedger` → `START_LEDGER`,
/// `network.passphrase` → `NETWORK_PASSPHRASE`).
pub fn config_env_name(key: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for ch in key.chars() {
        if ch.is_ascii_alphanumeric() {
            if ch.is_ascii_uppercase() && prev_lower {
                out.push('_');
            }
            prev_lower = ch.is_ascii_lowercase() || ch.is_ascii_digit();
            out.push(ch.to_ascii_uppercase());
        } else {
            prev_lower = false;
            if !out.ends_with('_') {
                out.push('_');
            }
        }
    }
    out
}

/// Whether an environment variable would change how the dynamic loader starts every program
/// (`LD_PRELOAD`, `LD_LIBRARY_PATH`, ...): such variables are refused in a spec.
pub fn is_loader_variable(name: &str) -> bool {
    name.starts_with("LD_")
}

/// Checks a resource name: lowercase letters, digits and '-', starting and ending with an
/// alphanumeric, at most [`MAX_NAME_LEN`] characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{:?} is longer than {MAX_NAME_LEN} characters",
            name
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !name.chars().all(ok_char) || !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(format!(
            "{name:?} must consist of lowercase letters, digits and '-', and start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// What is wrong with an `apiVersion` value, if anything.
fn api_version_message(v: &str) -> Option<String> {
    (v != API_VERSION).then(|| format!("unsupported apiVersion {v:?}, expected {API_VERSION:?}"))
}

/// What is wrong with a `kind` value, if anything.
fn kind_message(k: &str) -> Option<String> {
    (!KNOWN_KINDS.contains(&k)).then(|| {
        format!(
            "unknown kind {k:?}, expected one of: {}",
            KNOWN_KINDS.join(", ")
        )
    })
}

fn syntax_problem(e: &serde_saphyr::Error) -> Problem {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let rendered = e.without_snippet().to_string();
    // The rendered message may carry its own location prefix and extra lines; keep one line.
    let message = rendered
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid YAML")
        .to_owned();
    Problem {
        path: String::new(),
        line,
        column,
        message: format!("invalid YAML: {message}"),
    }
}

fn missing(path: &str) -> Problem {
    Problem {
        path: path.into(),
        line: 1,
        column: 1,
        message: "missing required field".into(),
    }
}

fn at<T>(path: &str, v: &Spanned<T>, message: String) -> Problem {
    Problem {
        path: path.into(),
        line: v.referenced.line(),
        column: v.referenced.column(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: demo\nspec:\n  sources: []\n";

    #[test]
    fn valid_document_parses() {
        let doc = parse_pipeline("p.yaml", GOOD).unwrap();
        assert_eq!(doc.name(), "demo");
        assert_eq!(doc.kind(), "Pipeline");
    }

    #[test]
    fn canonical_json_ignores_formatting_and_key_order() {
        let a = parse_pipeline("a", GOOD).unwrap();
        let b = parse_pipeline(
            "b",
            "# comment\nkind: Pipeline\nspec: {sources: []}\nmetadata: {name: demo}\napiVersion: flowctl/v1\n",
        )
        .unwrap();
        assert_eq!(a.canonical_json(), b.canonical_json());
        let c = parse_pipeline("c", &GOOD.replace("[]", "[x]")).unwrap();
        assert_ne!(a.canonical_json(), c.canonical_json());
    }

    #[test]
    fn malformed_yaml_reports_line_and_column() {
        let err = parse_pipeline(
            "bad.yaml",
            "apiVersion: flowctl/v1\nkind: [Pipeline\nmetadata: x\n",
        )
        .unwrap_err();
        let p = &err.problems[0];
        assert!(p.line >= 2, "{err}");
        assert!(p.column > 0, "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("bad.yaml:"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn unknown_kind_names_field_and_line() {
        let err =
            parse_pipeline("k.yaml", &GOOD.replace("kind: Pipeline", "kind: Pipelin")).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].path, "kind");
        assert_eq!(err.problems[0].line, 2);
        assert!(
            err.to_string()
                .starts_with("k.yaml:2:7: kind: unknown kind \"Pipelin\""),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let err = parse_pipeline(
            "m.yaml",
            "apiVersion: v2\nkind: Nope\nmetadata:\n  name: Bad_Name\n",
        )
        .unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["apiVersion", "kind", "metadata.name"]);
        assert_eq!(err.problems[2].line, 4);
    }

    #[test]
    fn missing_fields_are_reported() {
        let err = parse_pipeline("e.yaml", "spec: {}\n").unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["apiVersion", "kind", "metadata"]);
        assert!(parse_pipeline("s.yaml", "just a string").is_err());
    }

    #[test]
    fn names_follow_dns_label_rules() {
        assert!(check_name("stellar-token-pipeline").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("x-").is_err());
        assert!(check_name("UP").is_err());
        assert!(check_name(&"a".repeat(64)).is_err());
    }
}
