//! What a component says about itself, and its health, independent of which wire API carries it.

use std::collections::BTreeMap;
use std::fmt;

use flowctl_proto::{legacy, v1};

/// The role of a component in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    /// Produces events (e.g. ledgers from a data lake).
    Source,
    /// Consumes events and produces derived events.
    Processor,
    /// Consumes events at the end of a pipeline (a "sink" in the legacy API).
    Consumer,
}

impl ComponentKind {
    pub(crate) fn to_v1(self) -> v1::ComponentType {
        match self {
            ComponentKind::Source => v1::ComponentType::Source,
            ComponentKind::Processor => v1::ComponentType::Processor,
            ComponentKind::Consumer => v1::ComponentType::Consumer,
        }
    }

    pub(crate) fn to_legacy(self) -> legacy::ServiceType {
        match self {
            ComponentKind::Source => legacy::ServiceType::Source,
            ComponentKind::Processor => legacy::ServiceType::Processor,
            ComponentKind::Consumer => legacy::ServiceType::Sink,
        }
    }
}

/// A component's description, sent on every (re-)registration.
///
/// Build it with [`ComponentDescription::source`], [`processor`](Self::processor) or
/// [`consumer`](Self::consumer) and the `with_*` methods; the fields are public for anything
/// the builders do not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentDescription {
    pub kind: ComponentKind,
    /// The component's own id. Usually left empty: the control plane then uses
    /// `FLOWCTL_COMPONENT_ID`, or generates one.
    pub id: String,
    pub name: String,
    pub description: String,
    pub version: String,
    /// Fully-qualified protobuf message names the component consumes.
    pub input_event_types: Vec<String>,
    /// Fully-qualified protobuf message names the component produces.
    pub output_event_types: Vec<String>,
    /// The component's own gRPC `host:port`, if it serves one.
    pub endpoint: String,
    pub metadata: BTreeMap<String, String>,
    /// Legacy API only: the most messages the component processes at once (0: unspecified).
    pub max_inflight: i32,
}

impl ComponentDescription {
    pub fn new(kind: ComponentKind, name: impl Into<String>) -> Self {
        ComponentDescription {
            kind,
            id: String::new(),
            name: name.into(),
            description: String::new(),
            version: String::new(),
            input_event_types: Vec::new(),
            output_event_types: Vec::new(),
            endpoint: String::new(),
            metadata: BTreeMap::new(),
            max_inflight: 0,
        }
    }

    pub fn source(name: impl Into<String>) -> Self {
        Self::new(ComponentKind::Source, name)
    }

    pub fn processor(name: impl Into<String>) -> Self {
        Self::new(ComponentKind::Processor, name)
    }

    pub fn consumer(name: impl Into<String>) -> Self {
        Self::new(ComponentKind::Consumer, name)
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    pub fn with_input_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.input_event_types.push(event_type.into());
        self
    }

    pub fn with_output_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.output_event_types.push(event_type.into());
        self
    }

    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    pub fn with_max_inflight(mut self, max_inflight: i32) -> Self {
        self.max_inflight = max_inflight;
        self
    }
}

/// The health a component reports, on `/health` and (v1 API) in every heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// The initial state, until the component says otherwise.
    Starting,
    Healthy,
    /// Working, but impaired (e.g. falling behind).
    Degraded,
    Unhealthy,
    /// Shutting down; set by the agent on shutdown.
    Stopping,
}

impl HealthStatus {
    /// The lowercase name used in `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Stopping => "stopping",
        }
    }

    /// Whether `/health` answers 200 (otherwise 503).
    pub fn is_serving(self) -> bool {
        matches!(
            self,
            HealthStatus::Starting | HealthStatus::Healthy | HealthStatus::Degraded
        )
    }

    pub(crate) fn to_v1(self) -> v1::HealthStatus {
        match self {
            HealthStatus::Starting => v1::HealthStatus::Starting,
            HealthStatus::Healthy => v1::HealthStatus::Healthy,
            HealthStatus::Degraded => v1::HealthStatus::Degraded,
            HealthStatus::Unhealthy => v1::HealthStatus::Unhealthy,
            HealthStatus::Stopping => v1::HealthStatus::Stopping,
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            HealthStatus::Starting => 0,
            HealthStatus::Healthy => 1,
            HealthStatus::Degraded => 2,
            HealthStatus::Unhealthy => 3,
            HealthStatus::Stopping => 4,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => HealthStatus::Starting,
            1 => HealthStatus::Healthy,
            2 => HealthStatus::Degraded,
            3 => HealthStatus::Unhealthy,
            _ => HealthStatus::Stopping,
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_status_round_trips_through_its_byte() {
        for s in [
            HealthStatus::Starting,
            HealthStatus::Healthy,
            HealthStatus::Degraded,
            HealthStatus::Unhealthy,
            HealthStatus::Stopping,
        ] {
            assert_eq!(HealthStatus::from_u8(s.to_u8()), s);
        }
    }

    #[test]
    fn consumer_is_a_sink_in_the_legacy_api() {
        assert_eq!(
            ComponentKind::Consumer.to_legacy(),
            legacy::ServiceType::Sink
        );
        assert_eq!(ComponentKind::Consumer.to_v1(), v1::ComponentType::Consumer);
    }
}
