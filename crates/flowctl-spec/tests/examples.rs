//! Every YAML file in `/examples` parses, so examples cannot rot.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

#[test]
fn every_example_pipeline_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = flowctl_spec::parse_pipeline(&path.display().to_string(), &text)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!doc.name().is_empty());
        seen += 1;
    }
    assert!(seen >= 1, "no examples found in {}", dir.display());
}
