//! The published JSON Schema (`crates/flowctl-spec/pipeline.schema.json`, which the examples
//! reference for editors) is the one generated from the Rust types. Regenerate it with
//! `UPDATE_GOLDEN=1 cargo test -p flowctl-spec --test schema`.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

mod common;

#[test]
fn published_schema_is_up_to_date() {
    let schema = flowctl_spec::pipeline_schema();
    let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    let path = common::crate_dir().join("pipeline.schema.json");
    if let Err(e) = common::check_golden(&path, &text) {
        panic!("{e}");
    }
}

#[test]
fn schema_describes_the_document() {
    let s = flowctl_spec::pipeline_schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    let required: Vec<&str> = s["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["apiVersion", "kind", "metadata", "spec"]);
    let component = &s["$defs"]["Component"];
    assert_eq!(component["properties"]["replicas"]["maximum"], 64);
    assert_eq!(component["required"], serde_json::json!(["id"]));
    let drivers = serde_json::to_string(&s["$defs"]["Driver"]).unwrap();
    for d in ["process", "docker", "kubernetes"] {
        assert!(drivers.contains(d), "{drivers}");
    }
    let policies = serde_json::to_string(&s["$defs"]["PullPolicy"]).unwrap();
    for p in ["\"IfNotPresent\"", "\"Never\"", "\"Always\""] {
        assert!(policies.contains(p), "{policies}");
    }
    let docker = &s["$defs"]["DockerSettings"]["properties"]["network"];
    assert_eq!(docker["default"], "host");
    assert_eq!(docker["maxLength"], 64);
    let resources = &s["$defs"]["Resources"];
    assert_eq!(resources["additionalProperties"], false);
    assert!(resources["properties"]["memory"]["pattern"]
        .as_str()
        .unwrap()
        .contains("Mi"));
}
