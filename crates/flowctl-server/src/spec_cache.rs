//! Validated pipeline specs, parsed once per (name, generation) and shared by the API, the
//! scheduler and the supervisor. Stored documents were validated before they were stored, so
//! this only saves re-parsing; a document that no longer validates (a newer release with
//! stricter rules) is cached as `None` and not deployed.

use flowctl_spec::ValidatedPipeline;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Name → (generation, the spec if it validates).
type Entries = HashMap<String, (u64, Option<Arc<ValidatedPipeline>>)>;

#[derive(Clone, Default)]
pub struct SpecCache {
    inner: Arc<Mutex<Entries>>,
}

impl SpecCache {
    /// The cached spec of `name` at `generation`, if cached.
    pub fn cached(&self, name: &str, generation: u64) -> Option<Option<Arc<ValidatedPipeline>>> {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.get(name)
            .filter(|(g, _)| *g == generation)
            .map(|(_, v)| v.clone())
    }

    /// The spec of `name` at `generation`, validating `yaml` on a miss (outside the lock).
    pub fn get(&self, name: &str, generation: u64, yaml: &str) -> Option<Arc<ValidatedPipeline>> {
        if let Some(v) = self.cached(name, generation) {
            return v;
        }
        let v = match flowctl_spec::validate_pipeline(name, yaml) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                tracing::warn!(pipeline = name, error = %e, "stored pipeline does not validate");
                None
            }
        };
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(name.to_owned(), (generation, v.clone()));
        v
    }

    /// Records a spec validated elsewhere (by apply) for `generation`.
    pub fn insert(&self, name: &str, generation: u64, spec: Arc<ValidatedPipeline>) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(name.to_owned(), (generation, Some(spec)));
    }

    /// Drops entries of pipelines that no longer exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, _| keep(k));
    }
}
