//! The typed `flowctl/v1` Pipeline: what a document means once it is valid.
//!
//! These types are also the source of the published JSON Schema (see [`crate::pipeline_schema`]),
//! so their doc comments are what an editor shows on hover. Values are filled in by
//! [`crate::validate_pipeline`], never by serde: deserializing would stop at the first problem,
//! and validation must report all of them.

use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// The pattern of `metadata.name` and component ids: a DNS label (see [`crate::check_name`]).
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// The pattern of `spec.bus.topic_prefix`: Kafka's topic characters, not starting or ending
/// with '.'.
pub const TOPIC_PREFIX_PATTERN: &str = r"^[A-Za-z0-9_-]([A-Za-z0-9._-]*[A-Za-z0-9_-])?$";
/// The fewest instances of a component.
pub const MIN_REPLICAS: u32 = 1;
/// The most instances of a component.
pub const MAX_REPLICAS: u32 = 64;
/// The topic prefix when `spec.bus.topic_prefix` is not set.
pub const DEFAULT_TOPIC_PREFIX: &str = "flowctl";
/// The longest accepted `spec.bus.topic_prefix`: Kafka allows 249 characters in a topic name,
/// and [`crate::topic_name`] adds two dots and two names of at most 63 characters each.
pub const MAX_TOPIC_PREFIX_LEN: usize = 249 - 2 - 2 * crate::MAX_NAME_LEN;

/// A component's id: unique within its pipeline, and a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(extend("pattern" = NAME_PATTERN, "maxLength" = crate::MAX_NAME_LEN))]
pub struct ComponentId(String);

impl ComponentId {
    /// Wraps an id that passed [`crate::check_name`].
    pub(crate) fn new(id: String) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which section of `spec` a component is declared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    /// Produces events; has no inputs.
    Source,
    /// Consumes and produces events.
    Processor,
    /// Consumes events; nothing consumes from it.
    Sink,
}

impl ComponentKind {
    /// All kinds, in the order of the `spec` sections.
    pub const ALL: [ComponentKind; 3] = [Self::Source, Self::Processor, Self::Sink];

    /// `source`, `processor` or `sink`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Processor => "processor",
            Self::Sink => "sink",
        }
    }

    /// The `spec` field that lists components of this kind.
    pub fn section(self) -> &'static str {
        match self {
            Self::Source => "sources",
            Self::Processor => "processors",
            Self::Sink => "sinks",
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the components of a pipeline are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// Each instance is a local process started from `command`. No container runtime is
    /// assumed, so `image` is not allowed.
    #[default]
    Process,
    /// Each instance is a Docker container started from `image`.
    Docker,
    /// Each component is a Kubernetes workload started from `image`.
    Kubernetes,
}

impl Driver {
    pub const ALL: [Driver; 3] = [Self::Process, Self::Docker, Self::Kubernetes];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Docker => "docker",
            Self::Kubernetes => "kubernetes",
        }
    }

    /// Whether the driver runs container images (and so needs `image`, not `command`).
    pub fn runs_images(self) -> bool {
        !matches!(self, Self::Process)
    }
}

/// What the driver does when an instance exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever the instance exits.
    Always,
    /// Restart when the instance exits with a failure; a clean exit (a bounded source that
    /// finished) is left alone.
    #[default]
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    pub const ALL: [RestartPolicy; 3] = [Self::Always, Self::OnFailure, Self::Never];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}

/// A `flowctl/v1` Pipeline document.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "flowctl/v1 Pipeline")]
pub struct PipelineManifest {
    /// Always `flowctl/v1`.
    #[serde(rename = "apiVersion")]
    #[schemars(extend("const" = crate::API_VERSION))]
    pub api_version: String,
    /// Always `Pipeline`.
    #[schemars(extend("const" = "Pipeline"))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PipelineSpec,
}

/// The pipeline's name and labels.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The pipeline's name: a DNS label (lowercase letters, digits and '-', at most 63
    /// characters). It is part of every Kafka topic name of the pipeline.
    #[schemars(regex(pattern = NAME_PATTERN), length(min = 1, max = 63))]
    pub name: String,
    /// Free-form string labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What the pipeline runs and how its components are wired.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// How components are run. Default: `process`.
    #[serde(default)]
    pub driver: Driver,
    /// Kafka settings for the topics that connect the components.
    #[serde(default)]
    pub bus: Bus,
    /// Components that produce events. At least one.
    #[schemars(length(min = 1))]
    pub sources: Vec<Component>,
    /// Components that consume events and produce others.
    #[serde(default)]
    pub processors: Vec<Component>,
    /// Components that consume events. At least one.
    #[schemars(length(min = 1))]
    pub sinks: Vec<Component>,
}

/// Kafka settings of a pipeline. Each component that has consumers writes to one topic,
/// named `<topic_prefix>.<pipeline>.<component id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bus {
    /// Bootstrap brokers as `host:port`. Empty: the brokers the control plane is configured
    /// with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<String>,
    /// The first part of every topic name. Default: `flowctl`.
    #[serde(default = "default_topic_prefix")]
    #[schemars(
        regex(pattern = TOPIC_PREFIX_PATTERN),
        length(min = 1, max = MAX_TOPIC_PREFIX_LEN)
    )]
    pub topic_prefix: String,
    /// Partitions of each topic. Default: the broker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub partitions: Option<u32>,
    /// Replication factor of each topic. Default: the broker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32767))]
    pub replication_factor: Option<u16>,
}

fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.to_owned()
}

impl Default for Bus {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            topic_prefix: default_topic_prefix(),
            partitions: None,
            replication_factor: None,
        }
    }
}

/// One source, processor or sink. Set exactly one of `command` (with the `process` driver)
/// and `image` (with a container driver).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["command"]}, {"required": ["image"]}]))]
pub struct Component {
    /// Unique within the pipeline; a DNS label. Agents see it as `FLOWCTL_COMPONENT_ID`.
    pub id: ComponentId,
    /// What the component is, such as `stellar-live-source`; informational.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub component_type: Option<String>,
    /// Container image (container drivers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Program and arguments to run (the `process` driver), such as `["ttp-processor"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Extra arguments, appended to `command` or passed to the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Ids of the components this one consumes from. Sources have none; processors and
    /// sinks have at least one. Together they form a DAG: fan-in, fan-out and diamonds are
    /// allowed, cycles are not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<ComponentId>,
    /// Event types this component accepts (not for sources). When both sides of an edge
    /// declare types, they must have one in common.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_event_types: Vec<String>,
    /// Event types this component produces (not for sinks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_event_types: Vec<String>,
    /// Free-form configuration passed to the component.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Environment variables for each instance. Values are strings: quote numbers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Number of instances, 1 to 64. Default: 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: u32,
    /// The health HTTP port of the first instance. With the `process` driver, instance `i`
    /// (from 0) listens on `health_port + i`, and no two instances may share a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub health_port: Option<u16>,
    /// What to do when an instance exits. Default: `on-failure`.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
}

fn default_replicas() -> u32 {
    MIN_REPLICAS
}

impl Component {
    /// The component id replica `replica` registers under: see [`instance_id`].
    pub fn instance_id(&self, replica: u32) -> String {
        instance_id(self.id.as_str(), replica, self.replicas)
    }

    /// The health port of instance `instance` (from 0) under the `process` driver, where all
    /// instances share one host: `health_port + instance`. `None` when no port is set or the
    /// instance does not exist.
    pub fn health_port_of(&self, instance: u32) -> Option<u16> {
        if instance >= self.replicas {
            return None;
        }
        let port = u32::from(self.health_port?) + instance;
        u16::try_from(port).ok()
    }
}

/// The component id that replica `replica` of `component` registers under: the component's
/// id when it has one replica, else `<id>-<replica>`. The supervisor gives it to the instance
/// as `FLOWCTL_COMPONENT_ID`; everything that maps registrations back to instances uses it.
pub fn instance_id(component: &str, replica: u32, replicas: u32) -> String {
    if replicas > 1 {
        format!("{component}-{replica}")
    } else {
        component.to_owned()
    }
}
