//! The Kafka data plane of flowctl: what components use to move events between each other.
//!
//! - [`topics`]: topic names (`<prefix>.<pipeline>.<component>`, `<prefix>.<pipeline>.dlq`).
//! - [`ensure_topics`]: creates missing topics through the admin API; "already exists" is fine.
//! - [`Envelope`]: the event type and schema id every record carries in its headers, and the
//!   record key (the ledger sequence as decimal digits, see [`ledger_key`]).
//! - [`DlqRecord`]: the headers of a dead-letter record (what failed, where it came from).
//! - [`Producer`] and [`Consumer`]: an idempotent `acks=all` producer, and a consumer that
//!   `assign`s every partition of its topics from the beginning, from given offsets or from a
//!   group's committed offsets, optionally feeding a bounded channel.
//! - [`BusEnv`]: the data-plane environment the supervisor gives a component (`KAFKA_BROKERS`,
//!   `INPUT_TOPICS`, `OUTPUT_TOPIC`, `FLOWCTL_PIPELINE`, `DLQ_TOPIC`, ...).
//! - [`EmbeddedBroker`]: librdkafka's in-process mock cluster, so one process (such as
//!   `flowctl dev up`, or a test) can host a Kafka-protocol broker on a local ephemeral port.
//!
//! What it is not: a stream-processing framework (components own their loops), a schema
//! registry client, or a consumer-group coordinator (assignment is static).
//!
//! Invariants:
//! - Every queue is bounded: librdkafka's producer queue and prefetch buffer are capped, and
//!   the record channel has a fixed capacity, so a slow stage pushes back on a fast one.
//! - A produce is reported done only when the broker acknowledged it (`acks=all`, idempotent,
//!   so retries neither reorder nor duplicate within a partition).
//! - Errors name what they are about: the topic, the header, or the key.

mod admin;
mod client;
mod dlq;
mod embedded;
pub mod env;
mod envelope;
pub mod topics;

pub use admin::{ensure_topics, TopicSpec};
pub use client::{
    last_records, Consumer, ConsumerOptions, Delivered, OutRecord, Producer, Record,
    RecordReceiver, StartAt, CONSUMER_PREFETCH_KBYTES, DELIVERY_TIMEOUT, PRODUCER_QUEUE_MESSAGES,
};
pub use dlq::{
    DlqRecord, HEADER_ATTEMPT, HEADER_COMPONENT, HEADER_ERROR, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC, MAX_ERROR_LEN,
};
pub use embedded::{EmbeddedBroker, EMBEDDED_DEFAULT_PARTITIONS};
pub use env::BusEnv;
pub use envelope::{
    ledger_key, parse_ledger_key, Envelope, Headers, HEADER_EVENT_TYPE, HEADER_SCHEMA_ID,
};
pub use rdkafka::error::KafkaError;
pub use topics::{dlq_topic, topic_name, DEFAULT_TOPIC_PREFIX};

/// Errors of the data plane. Each one's message is a single line naming its subject.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create a Kafka client for brokers {brokers:?}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot read the cluster metadata from {brokers:?}: {source}")]
    Metadata {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("missing header {name}")]
    MissingHeader { name: String },
    #[error("header {name}={value:?}: {reason}")]
    BadHeader {
        name: String,
        value: String,
        reason: String,
    },
    #[error("record key {key:?}: {reason}")]
    BadKey { key: String, reason: String },
    #[error("producing to topic {topic}: {source}")]
    Produce {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("consuming: {source}")]
    Consume {
        #[source]
        source: KafkaError,
    },
    #[error("{0}")]
    Config(String),
    #[error("embedded broker: {0}")]
    Embedded(String),
    #[error("cancelled")]
    Cancelled,
    #[error("runtime: {0}")]
    Runtime(String),
}
