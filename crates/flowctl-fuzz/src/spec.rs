//! The `spec` target: a Pipeline document through everything the server and the CLI do with one.

use flowctl_spec::graph::{self, ComponentHealth, GraphFormat, Overlay};
use flowctl_spec::{
    component_changes, config_env_name, dlq_topic_name, is_loader_variable, parse_pipeline,
    topic_name, validate_pipeline, ValidatedPipeline,
};

const FILE: &str = "fuzz.yaml";

/// Parses and validates `data` as a Pipeline document (when it is UTF-8, as every API and
/// CLI path requires), then renders and queries the pipeline the way `flowctl graph`,
/// `flowctl apply` and the deployer do.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_pipeline(FILE, text) {
        Ok(doc) => {
            let _ = (doc.name(), doc.kind(), doc.source(), doc.canonical_json());
        }
        Err(e) => {
            let _ = (e.lines(), e.to_string());
        }
    }
    match validate_pipeline(FILE, text) {
        Ok(p) => exercise(&p),
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            let _ = (e.lines(), e.to_string());
        }
    }
}

fn exercise(p: &ValidatedPipeline) {
    let _ = (p.name(), p.doc().canonical_json(), dlq_topic_name(p));
    let mut overlay = Overlay::default();
    for (_, c) in p.components() {
        let _ = topic_name(p, &c.id);
        let _ = (p.layer(&c.id), p.downstream(&c.id).count());
        for replica in 0..c.replicas {
            let _ = (c.instance_id(replica), c.health_port_of(replica));
        }
        for key in c.config.keys() {
            let _ = config_env_name(key);
        }
        for key in c.env.keys() {
            let _ = is_loader_variable(key);
        }
        overlay.health.insert(
            c.id.to_string(),
            ComponentHealth::from_counts(c.replicas / 2, c.replicas),
        );
        for t in &c.output_event_types {
            overlay
                .event_type_notes
                .insert(t.clone(), "v1, id 1".into());
        }
    }
    let _ = (p.topological_order().count(), p.edges().len());
    for format in [
        GraphFormat::Svg,
        GraphFormat::Dot,
        GraphFormat::Mermaid,
        GraphFormat::Text,
    ] {
        let _ = graph::render(p, format);
        let _ = graph::render_with(p, format, &overlay);
    }
    // Re-applying the same document must not restart anything.
    let created = component_changes(None, p);
    assert_eq!(created.len(), p.components().count(), "{created:?}");
    let again = component_changes(Some(p), p);
    assert!(again.is_empty(), "a re-apply changes {again:?}");
}
