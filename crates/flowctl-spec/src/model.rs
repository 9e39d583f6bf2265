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
/// The pattern of `spec.docker.network`: a Docker network name.
pub const DOCKER_NETWORK_PATTERN: &str = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$";
/// The longest accepted `spec.docker.network`.
pub const MAX_DOCKER_NETWORK_LEN: usize = 64;
/// The network containers join when `spec.docker.network` is not set: the host's, so that
/// components reach the control plane and Kafka at the addresses the process driver uses.
pub const DEFAULT_DOCKER_NETWORK: &str = "host";
/// The pattern of a `resources.cpu` string (see [`crate::parse_cpu`]).
pub const CPU_PATTERN: &str = r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$";
/// The pattern of a `resources.memory` string (see [`crate::parse_memory`]).
pub const MEMORY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$";

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
    /// assumed, so `image`, `image_pull_policy` and `resources` are not allowed.
    #[default]
    Process,
    /// Each instance is a Docker container started from `image`, on the network of
    /// `spec.docker`.
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

    /// Whether the driver runs container images (and so needs `image`; `command` then
    /// overrides the entrypoint).
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

/// When a container driver pulls a component's image (Kubernetes' names and meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
pub enum PullPolicy {
    /// Pull only when the node does not have the image.
    #[default]
    IfNotPresent,
    /// Never pull: the image must already be on the node, else the instance fails to start.
    Never,
    /// Pull before every start, so a moved tag is picked up.
    Always,
}

impl PullPolicy {
    pub const ALL: [PullPolicy; 3] = [Self::IfNotPresent, Self::Never, Self::Always];

    /// `IfNotPresent`, `Never` or `Always`, as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
            Self::Always => "Always",
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    /// Settings of the `docker` driver (only with `driver: docker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSettings>,
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

impl PipelineSpec {
    /// The network every container joins, when the driver is `docker`: `spec.docker.network`,
    /// else [`DEFAULT_DOCKER_NETWORK`]. `None` with any other driver.
    pub fn docker_network(&self) -> Option<&str> {
        (self.driver == Driver::Docker).then(|| {
            self.docker
                .as_ref()
                .map_or(DEFAULT_DOCKER_NETWORK, |d| d.network.as_str())
        })
    }
}

/// Settings of the `docker` driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerSettings {
    /// The Docker network every container of the pipeline joins (`docker run --network`),
    /// such as `host`, `bridge` or a user-defined network; it must exist on every node.
    /// Default: `host`.
    #[serde(default = "default_docker_network")]
    #[schemars(
        regex(pattern = DOCKER_NETWORK_PATTERN),
        length(min = 1, max = MAX_DOCKER_NETWORK_LEN)
    )]
    pub network: String,
}

fn default_docker_network() -> String {
    DEFAULT_DOCKER_NETWORK.to_owned()
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            network: default_docker_network(),
        }
    }
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

/// One source, processor or sink. Set `command` with the `process` driver, `image` with a
/// container driver (where `command`, if set, overrides the image's entrypoint).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [{"required": ["command"]}, {"required": ["image"]}]))]
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
    /// When to pull `image` (container drivers only): `IfNotPresent`, `Never` or `Always`.
    /// Default: `IfNotPresent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Program and arguments to run (the `process` driver), such as `["ttp-processor"]`;
    /// with a container driver, the entrypoint that replaces the image's.
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
    /// CPU and memory limits of each instance (container drivers only). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

fn default_replicas() -> u32 {
    MIN_REPLICAS
}

impl Component {
    /// The component id replica `replica` registers under: see [`instance_id`].
    pub fn instance_id(&self, replica: u32) -> String {
        instance_id(self.id.as_str(), replica, self.replicas)
    }

    /// When to pull the image: `image_pull_policy`, else [`PullPolicy::IfNotPresent`].
    pub fn pull_policy(&self) -> PullPolicy {
        self.image_pull_policy.unwrap_or_default()
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

/// CPU and memory limits of each instance of a component (container drivers only).
// As written and as parsed. Only `validate_pipeline` and `Resources::new` build one, so the
// quantities always parse: drivers read `cpu_millis()` and `memory_bytes()`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU limit, as a Kubernetes quantity: cores (`"2"`, `"1.5"`) or millicores (`"500m"`),
    /// at least `1m` (`10m` with the `docker` driver). Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("type" = ["string", "number", "null"], "pattern" = CPU_PATTERN))]
    cpu: Option<String>,
    /// Memory limit, as a Kubernetes quantity: bytes (`"1000000"`) or with a suffix, `Ki`,
    /// `Mi`, `Gi`, `Ti` (powers of 1024: `"256Mi"`, `"1Gi"`) or `k`, `M`, `G`, `T` (powers of
    /// 1000: `"512M"`). At least `6Mi`, the least Docker accepts. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("type" = ["string", "integer", "null"], "pattern" = MEMORY_PATTERN))]
    memory: Option<String>,
    #[serde(skip)]
    cpu_millis: Option<u64>,
    #[serde(skip)]
    memory_bytes: Option<u64>,
}

/// Only [`crate::validate_pipeline`] and [`Resources::new`] build a `Resources`, so its
/// quantities always parse: drivers read the limits with [`Resources::cpu_millis`] and
/// [`Resources::memory_bytes`].
impl Resources {
    /// Checks and parses both quantities with [`crate::parse_cpu`] and
    /// [`crate::parse_memory`]; the error names the field that does not parse. (The `docker`
    /// driver's least CPU limit, [`crate::MIN_DOCKER_CPU_MILLIS`], is checked by validation,
    /// which knows the driver.)
    pub fn new(cpu: Option<String>, memory: Option<String>) -> Result<Self, String> {
        let cpu_millis = cpu
            .as_deref()
            .map(crate::parse_cpu)
            .transpose()
            .map_err(|e| format!("resources.cpu: {e}"))?;
        let memory_bytes = memory
            .as_deref()
            .map(crate::parse_memory)
            .transpose()
            .map_err(|e| format!("resources.memory: {e}"))?;
        Ok(Self {
            cpu,
            memory,
            cpu_millis,
            memory_bytes,
        })
    }

    /// Built by validation from quantities it has parsed: `(as written, parsed)`.
    pub(crate) fn from_parsed(cpu: Option<(String, u64)>, memory: Option<(String, u64)>) -> Self {
        let (cpu, cpu_millis) = cpu.unzip();
        let (memory, memory_bytes) = memory.unzip();
        Self {
            cpu,
            memory,
            cpu_millis,
            memory_bytes,
        }
    }

    /// `resources.cpu` as written (an unquoted number as its decimal spelling).
    pub fn cpu(&self) -> Option<&str> {
        self.cpu.as_deref()
    }

    /// `resources.memory` as written (an unquoted number as its decimal spelling).
    pub fn memory(&self) -> Option<&str> {
        self.memory.as_deref()
    }

    /// The CPU limit in thousandths of a core (at least 1), or `None` for no limit.
    pub fn cpu_millis(&self) -> Option<u64> {
        self.cpu_millis
    }

    /// The memory limit in bytes (at least [`crate::MIN_MEMORY_BYTES`]), or `None` for no
    /// limit.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory_bytes
    }

    /// Whether neither limit is set.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
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
