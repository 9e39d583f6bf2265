//! Topic names. They follow `flowctl_spec::topic_name`: a component's output topic is
//! `<topic_prefix>.<pipeline>.<component id>`, and each pipeline has one dead-letter topic,
//! `<topic_prefix>.<pipeline>.dlq`. A component whose id is `dlq` would share its output topic
//! with the dead-letter topic, so pipelines should not use that id.

/// The topic prefix when a pipeline's `spec.bus.topic_prefix` is not set.
pub const DEFAULT_TOPIC_PREFIX: &str = "flowctl";

/// The output topic of `component` in `pipeline`.
pub fn topic_name(prefix: &str, pipeline: &str, component: &str) -> String {
    format!("{prefix}.{pipeline}.{component}")
}

/// The dead-letter topic of `pipeline`.
pub fn dlq_topic(prefix: &str, pipeline: &str) -> String {
    format!("{prefix}.{pipeline}.dlq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix_pipeline_component_pattern() {
        assert_eq!(
            topic_name(DEFAULT_TOPIC_PREFIX, "stellar", "ttp-processor"),
            "flowctl.stellar.ttp-processor"
        );
        assert_eq!(
            dlq_topic("acme.flowctl", "stellar"),
            "acme.flowctl.stellar.dlq"
        );
    }
}
