//! The component's counters and gauges: cheap atomic handles, one registry per agent, rendered
//! as Prometheus text for `/metrics` and as maps for heartbeats.
//!
//! The registry is the agent's own, not a process-global `metrics` recorder: a library must not
//! take over the process's recorder, and the heartbeat needs exactly the component's values.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The most metric names one agent registers. Past it, new names get detached handles (they
/// count, but are neither exported nor sent), so a component that builds names from data
/// cannot grow the registry, `/metrics` and every heartbeat without bound.
pub const MAX_METRICS: usize = 1000;

/// Names starting with this are the agent's own (see [`render_prometheus`]).
pub const RESERVED_PREFIX: &str = "flowctl_agent_";

/// A monotonically increasing count. Cloning gives another handle to the same count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (e.g. the last ledger seen). Cloning gives another handle.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
}

/// One metric's value at a moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Counter(u64),
    Gauge(f64),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            // Precision is lost only past 2^53, which a heartbeat metric can live with.
            Value::Counter(v) => v as f64,
            Value::Gauge(v) => v,
        }
    }

    /// The value as Prometheus text writes it; heartbeats of the v1 API carry the same text.
    pub fn to_text(self) -> String {
        match self {
            Value::Counter(v) => v.to_string(),
            Value::Gauge(v) => format_float(v),
        }
    }
}

/// The metric names and their handles.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    metrics: Mutex<BTreeMap<String, Metric>>,
    warned: AtomicBool,
}

impl Registry {
    pub(crate) fn counter(&self, name: &str) -> Counter {
        let name = sanitize(name);
        let mut map = self.lock();
        match map.get(&name) {
            Some(Metric::Counter(c)) => return c.clone(),
            Some(Metric::Gauge(_)) => {
                drop(map);
                self.warn(&name, "is already a gauge");
                return Counter::default();
            }
            None => {}
        }
        if let Some(why) = refuse(&name, map.len()) {
            drop(map);
            self.warn(&name, why);
            return Counter::default();
        }
        let c = Counter::default();
        map.insert(name, Metric::Counter(c.clone()));
        c
    }

    pub(crate) fn gauge(&self, name: &str) -> Gauge {
        let name = sanitize(name);
        let mut map = self.lock();
        match map.get(&name) {
            Some(Metric::Gauge(g)) => return g.clone(),
            Some(Metric::Counter(_)) => {
                drop(map);
                self.warn(&name, "is already a counter");
                return Gauge::default();
            }
            None => {}
        }
        if let Some(why) = refuse(&name, map.len()) {
            drop(map);
            self.warn(&name, why);
            return Gauge::default();
        }
        let g = Gauge::default();
        map.insert(name, Metric::Gauge(g.clone()));
        g
    }

    /// Every metric's current value, sorted by name.
    pub(crate) fn snapshot(&self) -> Vec<(String, Value)> {
        self.lock()
            .iter()
            .map(|(name, m)| {
                let v = match m {
                    Metric::Counter(c) => Value::Counter(c.get()),
                    Metric::Gauge(g) => Value::Gauge(g.get()),
                };
                (name.clone(), v)
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Metric>> {
        // A panic while holding this lock cannot leave the map half-updated (every change is
        // a single insert), so a poisoned lock is still safe to use.
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn warn(&self, name: &str, why: &str) {
        // One warning per registry is enough to find the bug; a hot loop must not flood logs.
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(metric = name, "metric {why}; its handle is not exported");
        }
    }
}

fn refuse(name: &str, len: usize) -> Option<&'static str> {
    if name.starts_with(RESERVED_PREFIX) {
        Some("uses the reserved prefix flowctl_agent_")
    } else if len >= MAX_METRICS {
        Some("exceeds the limit of distinct metric names")
    } else {
        None
    }
}

/// Makes `name` a valid Prometheus metric name: characters outside `[A-Za-z0-9_:]` become `_`,
/// and a leading digit gets a `_` in front.
pub fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        v.to_string()
    }
}

/// The agent's own counters, exported next to the component's.
#[derive(Debug, Default)]
pub(crate) struct AgentStats {
    pub(crate) registrations: AtomicU64,
    pub(crate) registration_failures: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) heartbeat_failures: AtomicU64,
    pub(crate) registered: AtomicBool,
}

/// Prometheus text exposition (format 0.0.4) of the agent's and the component's metrics.
pub(crate) fn render_prometheus(stats: &AgentStats, component: &[(String, Value)]) -> String {
    let mut out = String::new();
    let own = [
        (
            "flowctl_agent_registrations_total",
            "Successful registrations with the control plane.",
            "counter",
            stats.registrations.load(Ordering::Relaxed),
        ),
        (
            "flowctl_agent_registration_failures_total",
            "Registration attempts that failed.",
            "counter",
            stats.registration_failures.load(Ordering::Relaxed),
        ),
        (
            "flowctl_agent_heartbeats_total",
            "Heartbeats the control plane accepted.",
            "counter",
            stats.heartbeats.load(Ordering::Relaxed),
        ),
        (
            "flowctl_agent_heartbeat_failures_total",
            "Heartbeats that failed.",
            "counter",
            stats.heartbeat_failures.load(Ordering::Relaxed),
        ),
        (
            "flowctl_agent_registered",
            "1 while the agent holds a registration.",
            "gauge",
            u64::from(stats.registered.load(Ordering::Relaxed)),
        ),
    ];
    // Writing to a String cannot fail.
    for (name, help, kind, v) in own {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    for (name, v) in component {
        let kind = match v {
            Value::Counter(_) => "counter",
            Value::Gauge(_) => "gauge",
        };
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {}", v.to_text());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_gives_the_same_counter() {
        let r = Registry::default();
        r.counter("events_processed").add(2);
        r.counter("events_processed").inc();
        assert_eq!(
            r.snapshot(),
            vec![("events_processed".to_owned(), Value::Counter(3))]
        );
    }

    #[test]
    fn names_are_sanitized_for_prometheus() {
        assert_eq!(sanitize("events processed/sec"), "events_processed_sec");
        assert_eq!(sanitize("9lives"), "_9lives");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("ok:name_1"), "ok:name_1");
    }

    #[test]
    fn a_kind_clash_gives_a_detached_handle() {
        let r = Registry::default();
        r.counter("x").add(5);
        r.gauge("x").set(1.0);
        assert_eq!(r.snapshot(), vec![("x".to_owned(), Value::Counter(5))]);
    }

    #[test]
    fn reserved_and_excess_names_are_not_registered() {
        let r = Registry::default();
        r.counter("flowctl_agent_heartbeats_total").add(1);
        for i in 0..MAX_METRICS + 10 {
            r.counter(&format!("c{i}")).inc();
        }
        let snap = r.snapshot();
        assert_eq!(snap.len(), MAX_METRICS);
        assert!(snap.iter().all(|(n, _)| !n.starts_with(RESERVED_PREFIX)));
    }

    #[test]
    fn prometheus_text_has_types_and_values() {
        let r = Registry::default();
        r.counter("events_processed").add(7);
        r.gauge("last_ledger").set(123.5);
        r.gauge("lag").set(f64::INFINITY);
        let text = render_prometheus(&AgentStats::default(), &r.snapshot());
        assert!(text.contains("# TYPE events_processed counter\nevents_processed 7\n"));
        assert!(text.contains("# TYPE last_ledger gauge\nlast_ledger 123.5\n"));
        assert!(text.contains("lag +Inf\n"));
        assert!(text.contains("flowctl_agent_registered 0\n"));
    }
}
