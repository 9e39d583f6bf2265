//! Graph rendering: SVG is well-formed XML naming every component, DOT is accepted by
//! Graphviz when it is installed, and Mermaid and text output match golden files
//! (`tests/graph/`, regenerated with `UPDATE_GOLDEN=1`).

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

mod common;

use flowctl_spec::graph::{to_dot, to_mermaid, to_svg, to_text};
use flowctl_spec::{validate_pipeline, ValidatedPipeline};
use std::io::Write as _;
use std::process::{Command, Stdio};

fn examples() -> Vec<(String, ValidatedPipeline)> {
    common::examples()
        .into_iter()
        .map(|path| {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let p = validate_pipeline(&stem, &text).unwrap_or_else(|e| panic!("{e}"));
            (stem, p)
        })
        .collect()
}

#[test]
fn svg_is_well_formed_and_shows_every_component_and_edge() {
    for (name, p) in examples() {
        let svg = to_svg(&p);
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{name}: {e}\n{svg}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        for (kind, c) in p.components() {
            assert!(texts.contains(&c.id.as_str()), "{name}: no text {}", c.id);
            let node_id = format!("node-{}", c.id);
            let g = doc
                .descendants()
                .find(|n| n.attribute("id") == Some(node_id.as_str()))
                .unwrap_or_else(|| panic!("{name}: no {node_id}"));
            assert!(g.attribute("class").unwrap().contains(kind.as_str()));
        }
        for e in p.edges() {
            assert!(
                texts.contains(&e.topic.as_str()),
                "{name}: no topic {}",
                e.topic
            );
        }
        let edge_groups = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("edge"))
            .count();
        assert_eq!(edge_groups, p.edges().len(), "{name}");
        // Every box lies inside the canvas.
        let width: f64 = root.attribute("width").unwrap().parse().unwrap();
        let height: f64 = root.attribute("height").unwrap().parse().unwrap();
        for r in doc.descendants().filter(|n| n.has_tag_name("rect")) {
            let f = |a| r.attribute(a).unwrap().parse::<f64>().unwrap();
            assert!(
                f("x") >= 0.0 && f("x") + f("width") <= width + 0.5,
                "{name}"
            );
            assert!(
                f("y") >= 0.0 && f("y") + f("height") <= height + 0.5,
                "{name}"
            );
        }
    }
}

fn dot_installed() -> bool {
    Command::new("dot")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn graphviz_accepts_the_dot_output() {
    if !dot_installed() {
        eprintln!("skipped: graphviz not installed");
        return;
    }
    for (name, p) in examples() {
        let mut child = Command::new("dot")
            .arg("-Tsvg")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(to_dot(&p).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: dot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
    }
}

#[test]
fn mermaid_and_text_output_match_golden_files() {
    let dir = common::crate_dir().join("tests/graph");
    let mut failures = Vec::new();
    for (name, p) in examples() {
        for (ext, out) in [
            ("mmd", to_mermaid(&p)),
            ("txt", to_text(&p)),
            ("dot", to_dot(&p)),
        ] {
            if let Err(e) = common::check_golden(&dir.join(format!("{name}.{ext}")), &out) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}
