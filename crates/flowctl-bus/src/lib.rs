//! Kafka data plane (work in progress).
