//! Pictures of a pipeline's DAG: SVG (laid out here, no Graphviz needed), Graphviz DOT,
//! Mermaid and plain text.
//!
//! Every renderer shows each component's id, kind and event types, and each edge's event types
//! and Kafka topic ([`crate::topic_name`]). The SVG layout is layered: a component's column is
//! its [`ValidatedPipeline::layer`] (sources left, sinks right), and within a column components
//! are ordered by the mean position of their neighbours to keep edges from crossing.
//! Output is a deterministic function of the pipeline, so it can be compared in tests.

use crate::model::{Component, ComponentKind};
use crate::pipeline::{Edge, ValidatedPipeline};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The output formats of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Svg,
    Dot,
    Mermaid,
    Text,
}

/// Renders the pipeline in `format`.
pub fn render(p: &ValidatedPipeline, format: GraphFormat) -> String {
    render_with(p, format, &Overlay::default())
}

/// Renders the pipeline in `format` with live information drawn over it.
pub fn render_with(p: &ValidatedPipeline, format: GraphFormat, ov: &Overlay) -> String {
    match format {
        GraphFormat::Svg => svg_with(p, ov),
        GraphFormat::Dot => dot_with(p, ov),
        GraphFormat::Mermaid => mermaid_with(p, ov),
        GraphFormat::Text => text_with(p, ov),
    }
}

/// What a running cluster knows beyond the spec: each component's health (which colours its
/// node) and notes on event types (such as their registered schema versions, shown on edges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    /// By component id.
    pub health: BTreeMap<String, ComponentHealth>,
    /// By event type, e.g. `v2, id 7`.
    pub event_type_notes: BTreeMap<String, String>,
}

/// The live health of a component's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentHealth {
    /// Every replica is registered and healthy.
    Healthy { ready: u32, desired: u32 },
    /// Some are.
    Degraded { ready: u32, desired: u32 },
    /// None is.
    Down { desired: u32 },
}

impl ComponentHealth {
    /// From the count of healthy replicas.
    pub fn from_counts(ready: u32, desired: u32) -> Self {
        if desired > 0 && ready >= desired {
            Self::Healthy { ready, desired }
        } else if ready > 0 {
            Self::Degraded { ready, desired }
        } else {
            Self::Down { desired }
        }
    }

    fn text(self) -> String {
        match self {
            Self::Healthy { ready, desired } => format!("healthy {ready}/{desired}"),
            Self::Degraded { ready, desired } => format!("degraded {ready}/{desired}"),
            Self::Down { desired } => format!("down 0/{desired}"),
        }
    }

    /// Fill and stroke.
    fn colours(self) -> (&'static str, &'static str) {
        match self {
            Self::Healthy { .. } => ("#c8e6c9", "#2e7d32"),
            Self::Degraded { .. } => ("#ffe0b2", "#ef6c00"),
            Self::Down { .. } => ("#ffcdd2", "#c62828"),
        }
    }
}

/// Fill and stroke of a component: by health when known, else by kind.
fn node_colours(kind: ComponentKind, c: &Component, ov: &Overlay) -> (&'static str, &'static str) {
    match ov.health.get(c.id.as_str()) {
        Some(h) => h.colours(),
        None => colours(kind),
    }
}

/// The lines that describe a component inside its box: id, kind (and type), event types,
/// and its health when known.
fn node_lines(kind: ComponentKind, c: &Component, ov: &Overlay) -> Vec<String> {
    let mut lines = vec![c.id.to_string()];
    let mut what = kind.as_str().to_owned();
    if let Some(t) = &c.component_type {
        what.push_str(": ");
        what.push_str(t);
    }
    if c.replicas > 1 {
        let _ = write!(what, " ×{}", c.replicas);
    }
    lines.push(what);
    lines.extend(c.input_event_types.iter().map(|t| format!("in:  {t}")));
    lines.extend(c.output_event_types.iter().map(|t| format!("out: {t}")));
    if let Some(h) = ov.health.get(c.id.as_str()) {
        lines.push(h.text());
    }
    lines
}

fn edge_types_text(e: &Edge<'_>, ov: &Overlay) -> String {
    if e.event_types.is_empty() {
        "any event type".to_owned()
    } else {
        e.event_types
            .iter()
            .map(|t| match ov.event_type_notes.get(*t) {
                Some(n) => format!("{t} ({n})"),
                None => t.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// Text

/// A plain-text listing: components by layer, then edges with topics and event types.
pub fn to_text(p: &ValidatedPipeline) -> String {
    text_with(p, &Overlay::default())
}

fn text_with(p: &ValidatedPipeline, ov: &Overlay) -> String {
    let edges = p.edges();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipeline {} (driver {}, {} components, {} edges)",
        p.name(),
        p.spec().driver.as_str(),
        p.components().count(),
        edges.len()
    );
    for (layer, column) in columns(p).iter().enumerate() {
        let _ = writeln!(out, "\nlayer {layer}");
        for (kind, c) in column {
            let lines = node_lines(*kind, c, ov);
            let _ = writeln!(out, "  {}  [{}]", lines[0], lines[1]);
            for l in &lines[2..] {
                let _ = writeln!(out, "    {l}");
            }
        }
    }
    if !edges.is_empty() {
        out.push_str("\nedges\n");
    }
    for e in &edges {
        let _ = writeln!(out, "  {} -> {}", e.from.id, e.to.id);
        let _ = writeln!(out, "    topic {}", e.topic);
        let _ = writeln!(out, "    types {}", edge_types_text(e, ov));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Mermaid

fn mermaid_id(c: &Component) -> String {
    // Ids are DNS labels, so '-' → '_' cannot collide; the prefix keeps ids such as `end`
    // from being read as Mermaid keywords.
    format!("c_{}", c.id.as_str().replace('-', "_"))
}

fn mermaid_text(s: &str) -> String {
    s.replace('&', "#amp;")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

/// A Mermaid flowchart (left to right), coloured by kind.
pub fn to_mermaid(p: &ValidatedPipeline) -> String {
    mermaid_with(p, &Overlay::default())
}

fn mermaid_with(p: &ValidatedPipeline, ov: &Overlay) -> String {
    let mut out = String::from("flowchart LR\n");
    for (kind, c) in p.components() {
        let label: Vec<String> = node_lines(kind, c, ov)
            .iter()
            .map(|l| mermaid_text(l))
            .collect();
        let _ = writeln!(
            out,
            "  {}[\"<b>{}</b><br/>{}\"]:::{}",
            mermaid_id(c),
            label[0],
            label[1..].join("<br/>"),
            match ov.health.get(c.id.as_str()) {
                Some(ComponentHealth::Healthy { .. }) => "healthy",
                Some(ComponentHealth::Degraded { .. }) => "degraded",
                Some(ComponentHealth::Down { .. }) => "down",
                None => kind.as_str(),
            }
        );
    }
    for e in p.edges() {
        let _ = writeln!(
            out,
            "  {} -->|\"{}<br/>{}\"| {}",
            mermaid_id(e.from),
            mermaid_text(&e.topic),
            mermaid_text(&edge_types_text(&e, ov)),
            mermaid_id(e.to)
        );
    }
    for kind in ComponentKind::ALL {
        let (fill, stroke) = colours(kind);
        let _ = writeln!(
            out,
            "  classDef {} fill:{fill},stroke:{stroke},color:#000",
            kind.as_str()
        );
    }
    if !ov.health.is_empty() {
        for h in [
            ComponentHealth::Healthy {
                ready: 0,
                desired: 0,
            },
            ComponentHealth::Degraded {
                ready: 0,
                desired: 0,
            },
            ComponentHealth::Down { desired: 0 },
        ] {
            let (fill, stroke) = h.colours();
            let name = h.text();
            let name = name.split(' ').next().unwrap_or_default();
            let _ = writeln!(
                out,
                "  classDef {name} fill:{fill},stroke:{stroke},color:#000"
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// DOT

fn dot_text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A Graphviz digraph (left to right); `dot -Tsvg` renders it.
pub fn to_dot(p: &ValidatedPipeline) -> String {
    dot_with(p, &Overlay::default())
}

fn dot_with(p: &ValidatedPipeline, ov: &Overlay) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_text(p.name()));
    out.push_str("  rankdir=LR;\n");
    out.push_str(
        "  node [shape=box, style=\"rounded,filled\", fontname=\"monospace\", fontsize=10];\n",
    );
    out.push_str("  edge [fontname=\"monospace\", fontsize=9];\n");
    for (kind, c) in p.components() {
        let label: Vec<String> = node_lines(kind, c, ov)
            .iter()
            .map(|l| dot_text(l))
            .collect();
        let (fill, stroke) = node_colours(kind, c, ov);
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\", fillcolor=\"{fill}\", color=\"{stroke}\"];",
            dot_text(c.id.as_str()),
            label.join("\\n")
        );
    }
    for (rank, kind) in [
        ("source", ComponentKind::Source),
        ("sink", ComponentKind::Sink),
    ] {
        let ids: Vec<String> = p
            .components()
            .filter(|(k, _)| *k == kind)
            .map(|(_, c)| format!("\"{}\";", dot_text(c.id.as_str())))
            .collect();
        if !ids.is_empty() {
            let _ = writeln!(out, "  {{ rank={rank}; {} }}", ids.join(" "));
        }
    }
    for e in p.edges() {
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [label=\"{}\\n{}\"];",
            dot_text(e.from.id.as_str()),
            dot_text(e.to.id.as_str()),
            dot_text(&e.topic),
            dot_text(&edge_types_text(&e, ov))
        );
    }
    out.push_str("}\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Layered layout and SVG

/// Fill and stroke colours of each kind.
fn colours(kind: ComponentKind) -> (&'static str, &'static str) {
    match kind {
        ComponentKind::Source => ("#e3f2fd", "#1e88e5"),
        ComponentKind::Processor => ("#fff3e0", "#fb8c00"),
        ComponentKind::Sink => ("#e8f5e9", "#43a047"),
    }
}

/// One slot in a layer: a component, or the point where an edge that spans several layers
/// crosses this one (so long edges get their own lane instead of running through boxes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    /// Index into [`Layered::nodes`].
    Node(usize),
    /// Edge index into [`Layered::edges`], and the layer crossed.
    Dummy { edge: usize, layer: usize },
}

/// The DAG in layers, each ordered to reduce crossings.
struct Layered<'a> {
    nodes: Vec<(ComponentKind, &'a Component)>,
    edges: Vec<Edge<'a>>,
    layers: Vec<Vec<Item>>,
    /// Per edge, the items it passes: its upstream, the layers it crosses, its downstream.
    chains: Vec<Vec<Item>>,
}

impl<'a> Layered<'a> {
    fn new(p: &'a ValidatedPipeline) -> Self {
        let nodes: Vec<(ComponentKind, &Component)> = p.components().collect();
        let edges = p.edges();
        let index: BTreeMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, (_, c))| (c.id.as_str(), i))
            .collect();
        let layer_of: Vec<usize> = nodes
            .iter()
            .map(|(_, c)| p.layer(&c.id).unwrap_or(0))
            .collect();
        let n_layers = layer_of.iter().max().map_or(0, |l| l + 1);
        let mut layers: Vec<Vec<Item>> = vec![Vec::new(); n_layers];
        for (i, l) in layer_of.iter().enumerate() {
            layers[*l].push(Item::Node(i));
        }
        let mut chains = Vec::with_capacity(edges.len());
        for (ei, e) in edges.iter().enumerate() {
            let (Some(&u), Some(&v)) = (index.get(e.from.id.as_str()), index.get(e.to.id.as_str()))
            else {
                chains.push(Vec::new());
                continue;
            };
            let mut chain = vec![Item::Node(u)];
            let crossed = layers
                .iter_mut()
                .enumerate()
                .take(layer_of[v])
                .skip(layer_of[u] + 1);
            for (l, layer) in crossed {
                let d = Item::Dummy { edge: ei, layer: l };
                layer.push(d);
                chain.push(d);
            }
            chain.push(Item::Node(v));
            chains.push(chain);
        }
        let mut g = Self {
            nodes,
            edges,
            layers,
            chains,
        };
        g.order(&layer_of);
        g
    }

    /// Barycenter sweeps: down using each item's neighbours in the layer before, up using
    /// those in the layer after. Ties keep the current order, which starts as document order.
    fn order(&mut self, layer_of: &[usize]) {
        let item_layer = |it: Item| match it {
            Item::Node(i) => layer_of[i],
            Item::Dummy { layer, .. } => layer,
        };
        let mut neighbours: BTreeMap<Item, Vec<Item>> = BTreeMap::new();
        for chain in &self.chains {
            for w in chain.windows(2) {
                neighbours.entry(w[1]).or_default().push(w[0]);
                neighbours.entry(w[0]).or_default().push(w[1]);
            }
        }
        let n = self.layers.len();
        let mut pos: BTreeMap<Item, f64> = BTreeMap::new();
        let record = |layers: &Vec<Vec<Item>>, pos: &mut BTreeMap<Item, f64>| {
            for layer in layers {
                for (i, it) in layer.iter().enumerate() {
                    pos.insert(*it, i as f64);
                }
            }
        };
        record(&self.layers, &mut pos);
        for _ in 0..4 {
            let down = (1..n).map(|l| (l, l - 1));
            let up = (0..n.saturating_sub(1)).rev().map(|l| (l, l + 1));
            for (l, other) in down.chain(up) {
                let mut keyed: Vec<(f64, usize, Item)> = self.layers[l]
                    .iter()
                    .enumerate()
                    .map(|(i, it)| {
                        let ps: Vec<f64> = neighbours
                            .get(it)
                            .into_iter()
                            .flatten()
                            .filter(|nb| item_layer(**nb) == other)
                            .filter_map(|nb| pos.get(nb).copied())
                            .collect();
                        let key = if ps.is_empty() {
                            i as f64
                        } else {
                            ps.iter().sum::<f64>() / ps.len() as f64
                        };
                        (key, i, *it)
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                self.layers[l] = keyed.into_iter().map(|(_, _, it)| it).collect();
                record(&self.layers, &mut pos);
            }
        }
    }

    /// The components of each layer, in drawing order.
    fn columns(&self) -> Vec<Vec<(ComponentKind, &'a Component)>> {
        self.layers
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .filter_map(|it| match it {
                        Item::Node(i) => Some(self.nodes[*i]),
                        Item::Dummy { .. } => None,
                    })
                    .collect()
            })
            .collect()
    }
}

/// Components by layer, each layer ordered to reduce edge crossings.
fn columns(p: &ValidatedPipeline) -> Vec<Vec<(ComponentKind, &Component)>> {
    Layered::new(p).columns()
}

const FONT_SIZE: f64 = 12.0;
/// Advance of one monospace character at [`FONT_SIZE`], rounded up so text stays inside boxes.
const CHAR_W: f64 = 7.4;
const LINE_H: f64 = 16.0;
const PAD: f64 = 10.0;
const MARGIN: f64 = 20.0;
const TITLE_H: f64 = 28.0;
/// Vertical space between two items of a column when one of them is a box.
const ROW_GAP: f64 = 56.0;
/// Vertical space between two lanes of long edges.
const LANE_GAP: f64 = 24.0;
/// Height of an edge label: two lines.
const LABEL_H: f64 = 2.0 * LINE_H + 4.0;
const MIN_COL_GAP: f64 = 90.0;

fn text_width(s: &str) -> f64 {
    s.chars().count() as f64 * CHAR_W
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A point on the cubic Bézier from `a` to `b` with horizontal tangents at both ends.
fn bezier(a: (f64, f64), b: (f64, f64), t: f64) -> (f64, f64) {
    let dx = (b.0 - a.0) / 2.0;
    let (p1, p2) = ((a.0 + dx, a.1), (b.0 - dx, b.1));
    let u = 1.0 - t;
    let x = u * u * u * a.0 + 3.0 * u * u * t * p1.0 + 3.0 * u * t * t * p2.0 + t * t * t * b.0;
    let y = u * u * u * a.1 + 3.0 * u * u * t * p1.1 + 3.0 * u * t * t * p2.1 + t * t * t * b.1;
    (x, y)
}

/// A box or lane placed on the canvas.
#[derive(Debug, Clone, Copy, Default)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

/// An edge label placed on the canvas: centred on (`x`, `y`).
struct Label {
    edge: usize,
    gap: usize,
    x: f64,
    y: f64,
    w: f64,
}

/// An SVG picture, laid out here: one column per layer (sources left, sinks right), boxes
/// coloured by kind, and curved edges labelled with topic and event types. Edges that span
/// several layers run in lanes of their own through the columns they cross.
pub fn to_svg(p: &ValidatedPipeline) -> String {
    svg_with(p, &Overlay::default())
}

fn svg_with(p: &ValidatedPipeline, ov: &Overlay) -> String {
    let g = Layered::new(p);
    let lines: Vec<Vec<String>> = g.nodes.iter().map(|(k, c)| node_lines(*k, c, ov)).collect();
    let size = |it: &Item| -> (f64, f64) {
        match it {
            Item::Node(i) => {
                let w = lines[*i].iter().map(|l| text_width(l)).fold(0.0, f64::max) + 2.0 * PAD;
                let h = lines[*i].len() as f64 * LINE_H + 2.0 * PAD - 4.0;
                (w, h)
            }
            Item::Dummy { .. } => (0.0, 0.0),
        }
    };
    let gap_between = |a: &Item, b: &Item| match (a, b) {
        (Item::Dummy { .. }, Item::Dummy { .. }) => LANE_GAP,
        _ => ROW_GAP,
    };
    let col_w: Vec<f64> = g
        .layers
        .iter()
        .map(|layer| layer.iter().map(|it| size(it).0).fold(40.0, f64::max))
        .collect();
    let col_h: Vec<f64> = g
        .layers
        .iter()
        .map(|layer| {
            let items: f64 = layer.iter().map(|it| size(it).1).sum();
            let gaps: f64 = layer.windows(2).map(|w| gap_between(&w[0], &w[1])).sum();
            items + gaps
        })
        .collect();
    // The gap after each column fits the widest label of the edges that leave it.
    let mut gap = vec![MIN_COL_GAP; g.layers.len()];
    let mut first_gap = vec![0; g.edges.len()];
    for (ei, chain) in g.chains.iter().enumerate() {
        let Some(Item::Node(u)) = chain.first() else {
            continue;
        };
        let l = g
            .layers
            .iter()
            .position(|layer| layer.contains(&Item::Node(*u)))
            .unwrap_or(0);
        first_gap[ei] = l;
        let e = &g.edges[ei];
        let w = text_width(&e.topic).max(text_width(&edge_types_text(e, ov))) + 40.0;
        gap[l] = gap[l].max(w);
    }

    // Place every item: columns left to right, each centred vertically.
    let inner_h = col_h.iter().copied().fold(0.0, f64::max);
    let mut placed: BTreeMap<Item, Rect> = BTreeMap::new();
    let mut col_x = vec![0.0; g.layers.len()];
    let mut x = MARGIN;
    for (l, layer) in g.layers.iter().enumerate() {
        col_x[l] = x;
        let mut y = MARGIN + TITLE_H + (inner_h - col_h[l]) / 2.0;
        for (k, it) in layer.iter().enumerate() {
            if k > 0 {
                y += gap_between(&layer[k - 1], it);
            }
            let (w, h) = size(it);
            let r = match it {
                Item::Node(_) => Rect {
                    x: x + (col_w[l] - w) / 2.0,
                    y,
                    w,
                    h,
                },
                Item::Dummy { .. } => Rect {
                    x,
                    y,
                    w: col_w[l],
                    h: 0.0,
                },
            };
            placed.insert(*it, r);
            y += h;
        }
        x += col_w[l] + gap[l];
    }
    let width = x - gap.last().copied().unwrap_or(0.0) + MARGIN;

    // Each edge as points joined by curves (in gaps) and straight runs (through lanes).
    let mut paths: Vec<Vec<(f64, f64)>> = Vec::with_capacity(g.edges.len());
    for chain in &g.chains {
        let mut pts = Vec::new();
        for (k, it) in chain.iter().enumerate() {
            let Some(r) = placed.get(it) else { continue };
            let cy = r.y + r.h / 2.0;
            match it {
                Item::Node(_) if k == 0 => pts.push((r.x + r.w, cy)),
                Item::Node(_) => pts.push((r.x, cy)),
                Item::Dummy { .. } => {
                    pts.push((r.x, cy));
                    pts.push((r.x + r.w, cy));
                }
            }
        }
        paths.push(pts);
    }

    // Edges leave and enter a box at ports spread along its side, ordered by where their
    // other end is, so fan-out and fan-in edges do not start or end on one point.
    let mut outs: BTreeMap<Item, Vec<usize>> = BTreeMap::new();
    let mut ins: BTreeMap<Item, Vec<usize>> = BTreeMap::new();
    for (ei, chain) in g.chains.iter().enumerate() {
        if let (Some(first), Some(last)) = (chain.first(), chain.last()) {
            if paths[ei].len() >= 2 {
                outs.entry(*first).or_default().push(ei);
                ins.entry(*last).or_default().push(ei);
            }
        }
    }
    let spread = |r: &Rect, k: usize, n: usize| r.y + r.h * (k + 1) as f64 / (n + 1) as f64;
    for (item, mut es) in outs {
        let Some(r) = placed.get(&item) else { continue };
        es.sort_by(|a, b| paths[*a][1].1.total_cmp(&paths[*b][1].1).then(a.cmp(b)));
        let n = es.len();
        for (k, ei) in es.into_iter().enumerate() {
            paths[ei][0].1 = spread(r, k, n);
        }
    }
    for (item, mut es) in ins {
        let Some(r) = placed.get(&item) else { continue };
        let prev = |ei: usize| paths[ei][paths[ei].len() - 2].1;
        es.sort_by(|a, b| prev(*a).total_cmp(&prev(*b)).then(a.cmp(b)));
        let n = es.len();
        for (k, ei) in es.into_iter().enumerate() {
            let last = paths[ei].len() - 1;
            paths[ei][last].1 = spread(r, k, n);
        }
    }

    // Labels sit at the middle of each edge's first curve, in the gap after its upstream;
    // labels in one gap are pushed down until none overlaps another.
    let mut labels: Vec<Label> = Vec::with_capacity(g.edges.len());
    for (ei, pts) in paths.iter().enumerate() {
        if pts.len() < 2 {
            continue;
        }
        let (x, y) = bezier(pts[0], pts[1], 0.5);
        let e = &g.edges[ei];
        let w = text_width(&e.topic).max(text_width(&edge_types_text(e, ov))) + 8.0;
        labels.push(Label {
            edge: ei,
            gap: first_gap[ei],
            x,
            y,
            w,
        });
    }
    labels.sort_by(|a, b| {
        a.gap
            .cmp(&b.gap)
            .then(a.y.total_cmp(&b.y))
            .then(a.edge.cmp(&b.edge))
    });
    for k in 1..labels.len() {
        if labels[k].gap == labels[k - 1].gap {
            let min = labels[k - 1].y + LABEL_H + 4.0;
            labels[k].y = labels[k].y.max(min);
        }
    }
    labels.sort_by_key(|l| l.edge);
    let labels_bottom = labels
        .iter()
        .map(|l| l.y + LABEL_H / 2.0 + MARGIN)
        .fold(0.0, f64::max);
    let height = (MARGIN * 2.0 + TITLE_H + inner_h).max(labels_bottom);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"monospace\" font-size=\"{FONT_SIZE}\">"
    );
    let _ = writeln!(out, "  <title>pipeline {}</title>", xml(p.name()));
    out.push_str("  <defs>\n    <marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto-start-reverse\">\n      <path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#555\"/>\n    </marker>\n  </defs>\n");
    let _ = writeln!(
        out,
        "  <rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"#ffffff\"/>"
    );
    let _ = writeln!(
        out,
        "  <text x=\"{MARGIN}\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\">pipeline {} (driver {})</text>",
        MARGIN + 14.0,
        xml(p.name()),
        p.spec().driver.as_str()
    );

    for label in &labels {
        let e = &g.edges[label.edge];
        let pts = &paths[label.edge];
        let mut d = format!("M {:.1} {:.1}", pts[0].0, pts[0].1);
        for (k, w) in pts.windows(2).enumerate() {
            let (a, b) = (w[0], w[1]);
            if k % 2 == 0 {
                // Even steps cross a gap: a curve with horizontal ends.
                let dx = (b.0 - a.0) / 2.0;
                let _ = write!(
                    d,
                    " C {:.1} {:.1}, {:.1} {:.1}, {:.1} {:.1}",
                    a.0 + dx,
                    a.1,
                    b.0 - dx,
                    b.1,
                    b.0,
                    b.1
                );
            } else {
                // Odd steps run straight through a lane of a column.
                let _ = write!(d, " L {:.1} {:.1}", b.0, b.1);
            }
        }
        let _ = writeln!(
            out,
            "  <g class=\"edge\" id=\"edge-{}-{}\">",
            e.from.id, e.to.id
        );
        let _ = writeln!(
            out,
            "    <path d=\"{d}\" fill=\"none\" stroke=\"#555\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>"
        );
        let _ = writeln!(
            out,
            "    <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{LABEL_H:.1}\" rx=\"3\" fill=\"#ffffff\" fill-opacity=\"0.9\" stroke=\"#ddd\"/>",
            label.x - label.w / 2.0,
            label.y - LABEL_H / 2.0,
            label.w
        );
        let _ = writeln!(
            out,
            "    <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#333\">{}</text>",
            label.x,
            label.y - 4.0,
            xml(&e.topic)
        );
        let _ = writeln!(
            out,
            "    <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#777\">{}</text>",
            label.x,
            label.y + LINE_H - 6.0,
            xml(&edge_types_text(e, ov))
        );
        out.push_str("  </g>\n");
    }

    for (i, (kind, c)) in g.nodes.iter().enumerate() {
        let Some(r) = placed.get(&Item::Node(i)) else {
            continue;
        };
        let (fill, stroke) = node_colours(*kind, c, ov);
        let _ = writeln!(
            out,
            "  <g class=\"node {}\" id=\"node-{}\">",
            kind.as_str(),
            c.id
        );
        let _ = writeln!(
            out,
            "    <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"/>",
            r.x, r.y, r.w, r.h
        );
        for (k, line) in lines[i].iter().enumerate() {
            let style = match k {
                0 => " font-weight=\"bold\"",
                1 => " font-style=\"italic\" fill=\"#555\"",
                _ => "",
            };
            let _ = writeln!(
                out,
                "    <text x=\"{:.1}\" y=\"{:.1}\"{style}>{}</text>",
                r.x + PAD,
                r.y + PAD + FONT_SIZE - 1.0 + k as f64 * LINE_H,
                xml(line)
            );
        }
        out.push_str("  </g>\n");
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bezier_ends_at_its_endpoints() {
        assert_eq!(bezier((0.0, 0.0), (10.0, 5.0), 0.0), (0.0, 0.0));
        assert_eq!(bezier((0.0, 0.0), (10.0, 5.0), 1.0), (10.0, 5.0));
    }

    #[test]
    fn health_overlay_colours_nodes_and_annotates_edges() {
        let yaml = "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: p\nspec:\n  sources:\n    - id: src\n      command: [a]\n      output_event_types: [x.Ev]\n  sinks:\n    - id: snk\n      command: [b]\n      inputs: [src]\n";
        let p = crate::validate_pipeline("p.yaml", yaml).unwrap();
        let mut ov = Overlay::default();
        ov.health
            .insert("src".into(), ComponentHealth::from_counts(1, 1));
        ov.health
            .insert("snk".into(), ComponentHealth::from_counts(0, 2));
        ov.event_type_notes.insert("x.Ev".into(), "v3, id 9".into());
        let svg = render_with(&p, GraphFormat::Svg, &ov);
        assert!(svg.contains("#c8e6c9"), "healthy fill");
        assert!(svg.contains("#ffcdd2"), "down fill");
        assert!(svg.contains("down 0/2"));
        assert!(svg.contains("x.Ev (v3, id 9)"));
        let dot = render_with(&p, GraphFormat::Dot, &ov);
        assert!(dot.contains("fillcolor=\"#ffcdd2\""));
        let mmd = render_with(&p, GraphFormat::Mermaid, &ov);
        assert!(mmd.contains(":::down") && mmd.contains("classDef down"));
        assert!(!render(&p, GraphFormat::Svg).contains("healthy"));
    }

    #[test]
    fn escaping_covers_markup() {
        assert_eq!(xml("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
        assert_eq!(dot_text("a\"b\\"), "a\\\"b\\\\");
        assert_eq!(mermaid_text("a\"<b>"), "a#quot;#lt;b#gt;");
    }
}
