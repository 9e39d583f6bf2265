//! Every YAML file in `/examples` parses and passes full validation, so examples cannot rot.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

mod common;

use flowctl_spec::graph::{render, GraphFormat};

#[test]
fn every_example_pipeline_parses() {
    for path in common::examples() {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = flowctl_spec::parse_pipeline(&path.display().to_string(), &text)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!doc.name().is_empty());
    }
}

#[test]
fn every_example_pipeline_validates_and_renders() {
    for path in common::examples() {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let p = flowctl_spec::validate_pipeline(&file, &text)
            .unwrap_or_else(|e| panic!("{}", e.lines().join("\n")));
        // The validated pipeline keeps the same stored form as the plain parse.
        let doc = flowctl_spec::parse_pipeline(&file, &text).unwrap();
        assert_eq!(p.doc(), &doc);
        assert_eq!(p.name(), doc.name());
        assert!(p.components().count() >= 2, "{file}");
        for format in [
            GraphFormat::Svg,
            GraphFormat::Dot,
            GraphFormat::Mermaid,
            GraphFormat::Text,
        ] {
            let out = render(&p, format);
            for (_, c) in p.components() {
                assert!(
                    out.contains(c.id.as_str()),
                    "{file} {format:?}: no {}",
                    c.id
                );
            }
        }
    }
}
