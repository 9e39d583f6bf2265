//! Valid DAG shapes (fan-in, fan-out, diamond), defaults, aliases and topic names.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_spec::{
    topic_name, validate_pipeline, ComponentKind, Driver, RestartPolicy, ValidatedPipeline,
};

/// A document with the given components, each `(section, id, inputs)`.
fn doc(components: &[(&str, &str, &[&str])]) -> String {
    let mut s =
        String::from("apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: shape\nspec:\n");
    for section in ["sources", "processors", "sinks"] {
        let items: Vec<_> = components.iter().filter(|c| c.0 == section).collect();
        if items.is_empty() {
            continue;
        }
        s.push_str(&format!("  {section}:\n"));
        for (_, id, inputs) in items {
            s.push_str(&format!("    - id: {id}\n      command: [\"{id}\"]\n"));
            if !inputs.is_empty() {
                s.push_str(&format!("      inputs: [{}]\n", inputs.join(", ")));
            }
        }
    }
    s
}

fn valid(text: &str) -> ValidatedPipeline {
    validate_pipeline("shape.yaml", text)
        .unwrap_or_else(|e| panic!("{}\n{text}", e.lines().join("\n")))
}

fn edges(p: &ValidatedPipeline) -> Vec<(String, String)> {
    p.edges()
        .iter()
        .map(|e| (e.from.id.to_string(), e.to.id.to_string()))
        .collect()
}

fn layer(p: &ValidatedPipeline, id: &str) -> usize {
    let (_, c) = p.components().find(|(_, c)| c.id.as_str() == id).unwrap();
    p.layer(&c.id).unwrap()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

#[test]
fn fan_in_is_valid() {
    let p = valid(&doc(&[
        ("sources", "left", &[]),
        ("sources", "right", &[]),
        ("sinks", "join", &["left", "right"]),
    ]));
    assert_eq!(edges(&p), [pair("left", "join"), pair("right", "join")]);
    assert_eq!(layer(&p, "join"), 1);
}

#[test]
fn fan_out_is_valid() {
    let p = valid(&doc(&[
        ("sources", "src", &[]),
        ("sinks", "a", &["src"]),
        ("sinks", "b", &["src"]),
    ]));
    assert_eq!(edges(&p), [pair("src", "a"), pair("src", "b")]);
    let (_, src) = p.components().next().unwrap();
    let down: Vec<_> = p.downstream(&src.id).map(|c| c.id.to_string()).collect();
    assert_eq!(down, ["a", "b"]);
    // Both consumers read the one topic of their upstream.
    let topics: Vec<_> = p.edges().iter().map(|e| e.topic.clone()).collect();
    assert_eq!(topics, ["flowctl.shape.src", "flowctl.shape.src"]);
}

#[test]
fn diamond_is_valid_and_ordered_topologically() {
    // Declared out of order on purpose: `b` is listed before `a`, which feeds it.
    let p = valid(&doc(&[
        ("sources", "s", &[]),
        ("processors", "b", &["a"]),
        ("processors", "a", &["s"]),
        ("processors", "c", &["s"]),
        ("sinks", "t", &["b", "c"]),
    ]));
    let order: Vec<_> = p.topological_order().map(|c| c.id.to_string()).collect();
    assert_eq!(order, ["s", "a", "b", "c", "t"]);
    assert_eq!(layer(&p, "s"), 0);
    assert_eq!(layer(&p, "a"), 1);
    assert_eq!(layer(&p, "c"), 1);
    assert_eq!(layer(&p, "b"), 2);
    // Sinks are drawn in the last layer.
    assert_eq!(layer(&p, "t"), 3);
}

#[test]
fn a_sink_reading_a_source_directly_sits_in_the_last_layer() {
    let p = valid(&doc(&[
        ("sources", "s", &[]),
        ("processors", "p1", &["s"]),
        ("processors", "p2", &["p1"]),
        ("sinks", "deep", &["p2"]),
        ("sinks", "shallow", &["s"]),
    ]));
    assert_eq!(layer(&p, "deep"), 3);
    assert_eq!(layer(&p, "shallow"), 3);
}

#[test]
fn defaults_are_filled_in() {
    let p = valid(&doc(&[("sources", "s", &[]), ("sinks", "t", &["s"])]));
    assert_eq!(p.spec().driver, Driver::Process);
    assert_eq!(p.spec().bus.topic_prefix, "flowctl");
    assert!(p.spec().bus.brokers.is_empty());
    let (kind, c) = p.components().next().unwrap();
    assert_eq!(kind, ComponentKind::Source);
    assert_eq!(c.replicas, 1);
    assert_eq!(c.restart_policy, RestartPolicy::OnFailure);
    assert_eq!(c.health_port, None);
    assert_eq!(topic_name(&p, &c.id), "flowctl.shape.s");
}

#[test]
fn camel_case_aliases_are_accepted() {
    let text = "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata: {name: alias}\nspec:\n  bus: {topicPrefix: acme}\n  sources:\n    - {id: s, command: [s], outputEventTypes: [a.v1.A], healthPort: 9000, restartPolicy: never}\n  sinks:\n    - {id: t, command: [t], inputs: [s], inputEventTypes: [a.v1.A]}\n";
    let p = valid(text);
    let (_, s) = p.components().next().unwrap();
    assert_eq!(s.output_event_types, ["a.v1.A"]);
    assert_eq!(s.health_port, Some(9000));
    assert_eq!(s.restart_policy, RestartPolicy::Never);
    assert_eq!(topic_name(&p, &s.id), "acme.alias.s");
    assert_eq!(p.edges()[0].event_types, ["a.v1.A"]);
}

#[test]
fn edge_types_are_the_intersection_when_both_sides_declare_them() {
    let text = "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata: {name: types}\nspec:\n  sources:\n    - {id: s, command: [s], output_event_types: [a, b, c]}\n  sinks:\n    - {id: t, command: [t], inputs: [s], input_event_types: [c, b, z]}\n    - {id: u, command: [u], inputs: [s]}\n";
    let p = valid(text);
    let e = p.edges();
    assert_eq!(e[0].event_types, ["b", "c"]);
    assert_eq!(e[1].event_types, ["a", "b", "c"]);
}

#[test]
fn replicated_components_get_consecutive_health_ports() {
    let text = "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata: {name: ports}\nspec:\n  sources:\n    - {id: s, command: [s], health_port: 8000, replicas: 3}\n  sinks:\n    - {id: t, command: [t], inputs: [s], health_port: 8003}\n";
    let p = valid(text);
    let (_, s) = p.components().next().unwrap();
    assert_eq!(s.health_port_of(0), Some(8000));
    assert_eq!(s.health_port_of(2), Some(8002));
    assert_eq!(s.health_port_of(3), None);
}

#[test]
fn container_drivers_do_not_share_a_host_port_space() {
    let text = "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata: {name: ports}\nspec:\n  driver: docker\n  sources:\n    - {id: s, image: s, health_port: 8080, replicas: 3}\n  sinks:\n    - {id: t, image: t, inputs: [s], health_port: 8080}\n";
    valid(text);
}

#[test]
fn yaml_1_1_booleans_stay_strings() {
    let text = "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata: {name: norway}\nspec:\n  sources:\n    - id: s\n      command: [s]\n      env: {COUNTRY: no, VERBOSE: yes}\n  sinks:\n    - {id: t, command: [t], inputs: [s]}\n";
    let p = valid(text);
    let (_, s) = p.components().next().unwrap();
    assert_eq!(s.env["COUNTRY"], "no");
}

#[test]
fn problems_are_reported_in_source_order() {
    let text = "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata: {name: Bad}\nspec:\n  sources:\n    - {id: s, command: [s], replicas: 0}\n  sinks:\n    - {id: t, command: [t], inputs: [x]}\n";
    let err = validate_pipeline("order.yaml", text).unwrap_err();
    let lines: Vec<u64> = err.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [3, 6, 8]);
    assert!(err.lines()[0].starts_with("order.yaml:3:"), "{err}");
}
