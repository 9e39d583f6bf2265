//! Offline spec commands: `validate`, `schema` and `graph`. They read a file, call
//! `flowctl-spec`, and print; they never contact a control plane.

use crate::{Format, Global};
use anyhow::Context;
use clap::ValueEnum;
use flowctl_spec::graph::GraphFormat;

/// Reads `file`, or standard input for "-".
fn read(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("while reading standard input")
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
    }
}

/// The name problems are reported under.
fn display_name(file: &str) -> &str {
    if file == "-" {
        "<stdin>"
    } else {
        file
    }
}

/// `flowctl validate -f FILE`: full validation, offline. Prints one OK line, or every problem
/// as `file:line:col: path: message`, one per line, and then fails (exit 1).
pub fn validate(g: &Global, file: &str) -> anyhow::Result<()> {
    let text = read(file)?;
    let name = display_name(file);
    let result = flowctl_spec::validate_pipeline(name, &text);
    if matches!(g.output, Format::Json | Format::Yaml) {
        let problems: Vec<serde_json::Value> = match &result {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "path": p.path, "line": p.line, "column": p.column, "message": p.message,
                    })
                })
                .collect(),
        };
        let value = serde_json::json!({
            "file": name,
            "valid": result.is_ok(),
            "pipeline": result.as_ref().ok().map(|p| p.name()),
            "problems": problems,
        });
        crate::output::print(g.output, &value, |_| Vec::new())?;
    }
    match result {
        Ok(p) => {
            if !matches!(g.output, Format::Json | Format::Yaml) {
                let plural =
                    |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
                println!(
                    "{name}: OK: pipeline {} ({}, {})",
                    p.name(),
                    plural(p.components().count(), "component"),
                    plural(p.edges().len(), "edge")
                );
            }
            Ok(())
        }
        Err(e) => {
            if !matches!(g.output, Format::Json | Format::Yaml) {
                for line in e.lines() {
                    println!("{line}");
                }
            }
            let n = e.problems.len();
            anyhow::bail!("{name}: {n} problem{} found", if n == 1 { "" } else { "s" })
        }
    }
}

/// The document kinds `flowctl schema` can print.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// A `flowctl/v1` Pipeline.
    Pipeline,
}

/// `flowctl schema pipeline`: the JSON Schema, generated from the spec's Rust types.
pub fn schema(kind: SchemaKind) -> anyhow::Result<()> {
    let schema = match kind {
        SchemaKind::Pipeline => flowctl_spec::pipeline_schema(),
    };
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(())
}

/// Output formats of `flowctl graph`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormatArg {
    /// An SVG picture, laid out by flowctl (no Graphviz needed).
    Svg,
    /// Graphviz DOT, for `dot -Tpng` and friends.
    Dot,
    /// A Mermaid flowchart, for Markdown.
    Mermaid,
    /// A plain-text listing of layers, edges and topics.
    Text,
}

#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// The pipeline YAML file ("-" reads standard input).
    #[arg(
        short = 'f',
        long = "filename",
        required_unless_present = "pipeline",
        conflicts_with = "pipeline"
    )]
    pub file: Option<String>,
    /// Draw a stored pipeline instead, with its components coloured by live health.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormatArg::Text)]
    pub format: GraphFormatArg,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<String>,
}

/// `flowctl graph -f FILE --format svg|dot|mermaid|text [--out FILE]`: draws the pipeline's
/// DAG from the file alone. `--pipeline NAME` (which needs a server) is
/// [`crate::commands::graph_live`].
pub fn graph(args: &GraphArgs) -> anyhow::Result<()> {
    let file = args.file.as_deref().unwrap_or("-");
    let text = read(file)?;
    let name = display_name(file);
    let pipeline = flowctl_spec::validate_pipeline(name, &text).map_err(|e| {
        anyhow::anyhow!(
            "{name} is not a valid pipeline (`flowctl validate -f {file}` lists every problem): {e}"
        )
    })?;
    write_graph(args, &pipeline, &flowctl_spec::graph::Overlay::default())
}

/// Renders in the chosen format and writes to `--out` or standard output.
pub fn write_graph(
    args: &GraphArgs,
    pipeline: &flowctl_spec::ValidatedPipeline,
    overlay: &flowctl_spec::graph::Overlay,
) -> anyhow::Result<()> {
    let format = match args.format {
        GraphFormatArg::Svg => GraphFormat::Svg,
        GraphFormatArg::Dot => GraphFormat::Dot,
        GraphFormatArg::Mermaid => GraphFormat::Mermaid,
        GraphFormatArg::Text => GraphFormat::Text,
    };
    let rendered = flowctl_spec::graph::render_with(pipeline, format, overlay);
    match &args.out {
        Some(out) => {
            std::fs::write(out, rendered).with_context(|| format!("cannot write {out}"))?;
        }
        None => print!("{rendered}"),
    }
    Ok(())
}

/// Where `flowctl render` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RenderTarget {
    /// A Deployment per component, for `kubectl apply -f`.
    Kubernetes,
}

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// What to write manifests for.
    #[arg(long, value_enum)]
    pub target: RenderTarget,
    /// The pipeline YAML file ("-" reads standard input).
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    /// The namespace of every manifest (default: none, so kubectl's).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The control plane as the pods reach it (FLOWCTL_ENDPOINT): by default the `flowctl`
    /// Service of deploy/kubernetes/flowctl.yaml.
    #[arg(long, default_value = "flowctl:8080")]
    pub endpoint: String,
    /// Brokers for a pipeline whose spec.bus names none (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub kafka_brokers: Vec<String>,
    /// FLOWCTL_HEARTBEAT_INTERVAL given to the components, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_interval: f64,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<String>,
}

/// `flowctl render --target kubernetes -f FILE`: the manifests that run the pipeline's
/// components on Kubernetes, as multi-document YAML, from the file alone.
pub fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let text = read(&args.file)?;
    let name = display_name(&args.file);
    let pipeline = flowctl_spec::validate_pipeline(name, &text).map_err(|e| {
        anyhow::anyhow!(
            "{name} is not a valid pipeline (`flowctl validate -f {}` lists every problem): {e}",
            args.file
        )
    })?;
    if !(args.heartbeat_interval.is_finite() && args.heartbeat_interval > 0.0) {
        anyhow::bail!("--heartbeat-interval must be a positive number of seconds");
    }
    let opts = flowctl_server::deploy::RenderOptions {
        namespace: args.namespace.clone(),
        endpoint: args.endpoint.clone(),
        kafka_brokers: args.kafka_brokers.clone(),
        heartbeat_interval_ms: (args.heartbeat_interval * 1000.0).round() as u64,
    };
    let manifests = match args.target {
        RenderTarget::Kubernetes => flowctl_server::deploy::render_kubernetes(&pipeline, &opts)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?,
    };
    let mut out = format!(
        "# Rendered by `flowctl render --target kubernetes` from {name} (pipeline {}).\n",
        pipeline.name()
    );
    for m in &manifests {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(m)?);
    }
    match &args.out {
        Some(path) => std::fs::write(path, out).with_context(|| format!("cannot write {path}"))?,
        None => print!("{out}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConsistencyArg;

    fn global() -> Global {
        Global {
            endpoints: String::new(),
            output: Format::Table,
            consistency: ConsistencyArg::Linearizable,
            timeout: 1,
            token: None,
            token_file: None,
        }
    }

    fn example() -> String {
        format!(
            "{}/../../examples/stellar-pipeline.yaml",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    #[test]
    fn validate_accepts_the_example_and_counts_problems_otherwise() {
        validate(&global(), &example()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "apiVersion: flowctl/v1\nkind: Pipeline\n").unwrap();
        let err = validate(&global(), bad.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().ends_with("2 problems found"), "{err}");
    }

    #[test]
    fn graph_writes_svg_to_the_out_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("g.svg");
        graph(&GraphArgs {
            pipeline: None,
            file: Some(example()),
            format: GraphFormatArg::Svg,
            out: Some(out.display().to_string()),
        })
        .unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("ttp-processor"));
    }
}
