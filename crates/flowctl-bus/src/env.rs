//! The data-plane environment the supervisor gives a component.
//!
//! | variable | meaning |
//! |---|---|
//! | `KAFKA_BROKERS` | comma-separated `host:port` list (default `localhost:9092`) |
//! | `INPUT_TOPICS` | comma-separated topics to read (sources have none) |
//! | `OUTPUT_TOPIC` | the topic to write (sinks have none) |
//! | `FLOWCTL_PIPELINE` | the pipeline's name |
//! | `FLOWCTL_COMPONENT_ID` | the component instance's id |
//! | `FLOWCTL_REPLICA` | the replica number (default 0) |
//! | `TOPIC_PREFIX` | the pipeline's topic prefix (default `flowctl`) |
//! | `DLQ_TOPIC` | the dead-letter topic (default `<TOPIC_PREFIX>.<FLOWCTL_PIPELINE>.dlq`) |

use crate::{dlq_topic, Error, DEFAULT_TOPIC_PREFIX};

pub const ENV_KAFKA_BROKERS: &str = "KAFKA_BROKERS";
pub const ENV_INPUT_TOPICS: &str = "INPUT_TOPICS";
pub const ENV_OUTPUT_TOPIC: &str = "OUTPUT_TOPIC";
pub const ENV_PIPELINE: &str = "FLOWCTL_PIPELINE";
pub const ENV_COMPONENT_ID: &str = "FLOWCTL_COMPONENT_ID";
pub const ENV_REPLICA: &str = "FLOWCTL_REPLICA";
pub const ENV_TOPIC_PREFIX: &str = "TOPIC_PREFIX";
pub const ENV_DLQ_TOPIC: &str = "DLQ_TOPIC";

/// Brokers when `KAFKA_BROKERS` is not set.
pub const DEFAULT_BROKERS: &str = "localhost:9092";

/// The parsed data-plane environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEnv {
    pub brokers: String,
    pub input_topics: Vec<String>,
    pub output_topic: Option<String>,
    pub pipeline: Option<String>,
    pub component_id: Option<String>,
    pub replica: u32,
    /// `DLQ_TOPIC`, or the pipeline's dead-letter topic when the pipeline is known.
    pub dlq_topic: Option<String>,
}

impl BusEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads from any lookup; an empty value counts as unset. Every bad variable is reported.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let list = |v: Option<String>| -> Vec<String> {
            v.map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
        };
        let mut problems = Vec::new();
        let brokers = list(get(ENV_KAFKA_BROKERS)).join(",");
        let brokers = if brokers.is_empty() {
            DEFAULT_BROKERS.to_owned()
        } else {
            brokers
        };
        let replica = match get(ENV_REPLICA) {
            None => 0,
            Some(v) => v.parse().unwrap_or_else(|_| {
                problems.push(format!("{ENV_REPLICA}={v:?}: expected a whole number"));
                0
            }),
        };
        let pipeline = get(ENV_PIPELINE);
        let prefix = get(ENV_TOPIC_PREFIX).unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.to_owned());
        let dlq = get(ENV_DLQ_TOPIC).or_else(|| pipeline.as_deref().map(|p| dlq_topic(&prefix, p)));
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        Ok(BusEnv {
            brokers,
            input_topics: list(get(ENV_INPUT_TOPICS)),
            output_topic: get(ENV_OUTPUT_TOPIC),
            pipeline,
            component_id: get(ENV_COMPONENT_ID),
            replica,
            dlq_topic: dlq,
        })
    }

    /// The output topic, or an error naming `OUTPUT_TOPIC`.
    pub fn require_output_topic(&self) -> Result<&str, Error> {
        self.output_topic
            .as_deref()
            .ok_or_else(|| Error::Config(format!("{ENV_OUTPUT_TOPIC} is not set")))
    }

    /// The input topics, or an error naming `INPUT_TOPICS` when there are none.
    pub fn require_input_topics(&self) -> Result<&[String], Error> {
        if self.input_topics.is_empty() {
            return Err(Error::Config(format!("{ENV_INPUT_TOPICS} is not set")));
        }
        Ok(&self.input_topics)
    }

    /// The dead-letter topic, or an error naming the variables that would give one.
    pub fn require_dlq_topic(&self) -> Result<&str, Error> {
        self.dlq_topic.as_deref().ok_or_else(|| {
            Error::Config(format!("neither {ENV_DLQ_TOPIC} nor {ENV_PIPELINE} is set"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn supervisor_environment_is_parsed() {
        let env = BusEnv::from_vars(vars(&[
            ("KAFKA_BROKERS", "a:9092, b:9092"),
            ("INPUT_TOPICS", "flowctl.p.src,flowctl.p.other"),
            ("OUTPUT_TOPIC", "flowctl.p.proc"),
            ("FLOWCTL_PIPELINE", "p"),
            ("FLOWCTL_REPLICA", "2"),
        ]))
        .unwrap();
        assert_eq!(env.brokers, "a:9092,b:9092");
        assert_eq!(env.input_topics, ["flowctl.p.src", "flowctl.p.other"]);
        assert_eq!(env.dlq_topic.as_deref(), Some("flowctl.p.dlq"));
        assert_eq!(env.replica, 2);
    }

    #[test]
    fn dlq_topic_override_and_defaults() {
        let env =
            BusEnv::from_vars(vars(&[("DLQ_TOPIC", "dead"), ("FLOWCTL_PIPELINE", "p")])).unwrap();
        assert_eq!(env.dlq_topic.as_deref(), Some("dead"));
        let env = BusEnv::from_vars(vars(&[])).unwrap();
        assert_eq!(env.brokers, DEFAULT_BROKERS);
        assert!(env.require_dlq_topic().is_err());
        assert_eq!(
            env.require_output_topic().unwrap_err().to_string(),
            "OUTPUT_TOPIC is not set"
        );
        assert!(BusEnv::from_vars(vars(&[("FLOWCTL_REPLICA", "x")])).is_err());
    }
}
