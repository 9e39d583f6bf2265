//! Topic administration: create what is missing, accept what exists.
//!
//! ```text
//!  ensure_topics                         broker
//!    │── Metadata(all topics) ────────────▶│   which of the wanted topics exist?
//!    │── CreateTopics(missing) ───────────▶│   TOPIC_ALREADY_EXISTS counts as success
//!    │── Metadata(wanted), until deadline ▶│   creation is asynchronous in Kafka: wait until
//!    │                                      │   every topic is visible with its partitions
//! ```
//!
//! A broker that does not implement CreateTopics gets the topics by auto-creation instead: a
//! metadata request that allows it. Such topics get the broker's default partition count, not
//! the spec's ([`EmbeddedBroker::create_topics`] honours it). That is librdkafka's mock cluster,
//! which [`EmbeddedBroker`](crate::EmbeddedBroker) runs and which is recognised by its cluster
//! id (`mockCluster…`), since librdkafka would otherwise wait out the whole timeout for a broker
//! that supports the request; and brokers that answer CreateTopics with "unsupported".
//!
//! [`EmbeddedBroker::create_topics`]: crate::EmbeddedBroker::create_topics

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::Error;

/// One topic to ensure. `None` leaves the partition count or replication factor to the
/// broker's defaults (`num.partitions`, `default.replication.factor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: Option<u32>,
    pub replication_factor: Option<u16>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>) -> Self {
        TopicSpec {
            name: name.into(),
            partitions: None,
            replication_factor: None,
        }
    }

    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    pub fn with_replication_factor(mut self, replication_factor: u16) -> Self {
        self.replication_factor = Some(replication_factor);
        self
    }
}

/// How librdkafka's mock cluster ids begin (`rdkafka_mock.c`).
const MOCK_CLUSTER_ID_PREFIX: &str = "mockCluster";

/// How often topic metadata is polled while waiting for topics to appear.
const METADATA_POLL: Duration = Duration::from_millis(100);

/// Creates the topics of `topics` that do not exist yet and waits until all of them are visible
/// in the cluster metadata, all within `timeout`. Topics that already exist, whatever their
/// partition count, count as success. An error names the first topic that failed.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<(), Error> {
    if topics.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    for t in topics {
        validate(t)?;
    }
    let (existing, mock) = existing_topics(brokers, remaining(deadline)).await?;
    let missing: Vec<&TopicSpec> = topics
        .iter()
        .filter(|t| !existing.contains(&t.name))
        .collect();

    if !missing.is_empty() {
        let unsupported = if mock {
            missing.iter().map(|t| t.name.clone()).collect()
        } else {
            create(brokers, &missing, remaining(deadline)).await?
        };
        if !unsupported.is_empty() {
            tracing::info!(
                topics = ?unsupported,
                "broker does not implement CreateTopics; creating the topics by auto-creation"
            );
            auto_create(brokers, unsupported, remaining(deadline)).await?;
        }
    }

    let wanted: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    wait_visible(brokers, wanted, deadline).await
}

fn validate(t: &TopicSpec) -> Result<(), Error> {
    let bad = |reason: String| Error::CreateTopic {
        topic: t.name.clone(),
        reason,
    };
    if t.name.is_empty() || t.name.len() > 249 {
        return Err(bad("a topic name has 1 to 249 characters".to_owned()));
    }
    if !t
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("a topic name uses only [a-zA-Z0-9._-]".to_owned()));
    }
    if t.partitions == Some(0) || t.partitions.is_some_and(|p| p > i32::MAX as u32) {
        return Err(bad("partitions must be at least 1".to_owned()));
    }
    if t.replication_factor == Some(0) {
        return Err(bad("replication_factor must be at least 1".to_owned()));
    }
    Ok(())
}

fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Creates `missing`; returns the topics the broker could not create because it does not
/// implement CreateTopics.
async fn create(
    brokers: &str,
    missing: &[&TopicSpec],
    timeout: Duration,
) -> Result<Vec<String>, Error> {
    // Client creation blocks; keep it off the async workers.
    let owned = brokers.to_owned();
    let admin: OffWorkerDrop<AdminClient<DefaultClientContext>> = blocking(move || {
        ClientConfig::new()
            .set("bootstrap.servers", &owned)
            .create()
            .map(OffWorkerDrop::new)
            .map_err(|source| Error::Client {
                brokers: owned.clone(),
                source,
            })
    })
    .await?;
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            NewTopic::new(
                &t.name,
                t.partitions.map_or(-1, |p| p as i32),
                TopicReplication::Fixed(t.replication_factor.map_or(-1, i32::from)),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = match admin.create_topics(&new_topics, &opts).await {
        Ok(r) => r,
        Err(KafkaError::AdminOp(code)) if is_unsupported(code) => {
            return Ok(missing.iter().map(|t| t.name.clone()).collect());
        }
        Err(e) => {
            return Err(Error::CreateTopic {
                topic: missing[0].name.clone(),
                reason: e.to_string(),
            })
        }
    };
    let mut unsupported = Vec::new();
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) if is_unsupported(code) => unsupported.push(topic),
            Err((topic, code)) => {
                return Err(Error::CreateTopic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(unsupported)
}

fn is_unsupported(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::InvalidRequest
    )
}

fn metadata_client(brokers: &str, allow_auto_create: bool) -> Result<BaseProducer, Error> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "allow.auto.create.topics",
            if allow_auto_create { "true" } else { "false" },
        )
        .create()
        .map_err(|source| Error::Client {
            brokers: brokers.to_owned(),
            source,
        })
}

/// The names of every topic in the cluster, and whether the cluster is librdkafka's mock.
async fn existing_topics(
    brokers: &str,
    timeout: Duration,
) -> Result<(BTreeSet<String>, bool), Error> {
    let brokers = brokers.to_owned();
    // librdkafka's metadata call blocks its thread until the broker answers.
    blocking(move || {
        let client = metadata_client(&brokers, false)?;
        let md = client
            .client()
            .fetch_metadata(None, timeout)
            .map_err(|source| Error::Metadata {
                brokers: brokers.clone(),
                source,
            })?;
        let mock = client
            .client()
            .fetch_cluster_id(timeout)
            .is_some_and(|id| id.starts_with(MOCK_CLUSTER_ID_PREFIX));
        Ok((
            md.topics().iter().map(|t| t.name().to_owned()).collect(),
            mock,
        ))
    })
    .await
}

async fn auto_create(brokers: &str, topics: Vec<String>, timeout: Duration) -> Result<(), Error> {
    let brokers = brokers.to_owned();
    blocking(move || {
        let client = metadata_client(&brokers, true)?;
        for topic in topics {
            client
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| Error::CreateTopic {
                    topic: topic.clone(),
                    reason: format!("auto-creation failed: {e}"),
                })?;
        }
        Ok(())
    })
    .await
}

/// Waits until every topic in `topics` has partitions and no error in the metadata.
async fn wait_visible(brokers: &str, topics: Vec<String>, deadline: Instant) -> Result<(), Error> {
    let client = {
        let brokers = brokers.to_owned();
        blocking(move || metadata_client(&brokers, false)).await?
    };
    let client = std::sync::Arc::new(client);
    let mut pending: Vec<String> = topics;
    loop {
        let c = client.clone();
        let check = pending.clone();
        let timeout = remaining(deadline).min(Duration::from_secs(5));
        pending = blocking(move || {
            Ok(check
                .into_iter()
                .filter(|t| !visible(&c, t, timeout))
                .collect())
        })
        .await?;
        match pending.first() {
            None => return Ok(()),
            Some(t) if Instant::now() >= deadline => {
                return Err(Error::CreateTopic {
                    topic: t.clone(),
                    reason: "not visible in the cluster metadata before the deadline".to_owned(),
                })
            }
            Some(_) => tokio::time::sleep(METADATA_POLL).await,
        }
    }
}

fn visible(client: &BaseProducer, topic: &str, timeout: Duration) -> bool {
    match client.client().fetch_metadata(Some(topic), timeout) {
        Ok(md) => md.topics().iter().any(|t| {
            t.name() == topic
                && t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions()
                    .iter()
                    .all(|p| p.error().is_none() && p.leader() >= 0)
        }),
        Err(_) => false,
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?
}

/// Owns a librdkafka client whose destruction (`rd_kafka_destroy`, which joins the client's
/// threads and, for a consumer, waits for it to close) must not run on an async worker: when
/// the last handle goes inside a Tokio runtime, the client is dropped on the blocking pool.
pub(crate) struct OffWorkerDrop<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> OffWorkerDrop<T> {
    pub(crate) fn new(client: T) -> Self {
        OffWorkerDrop(Some(client))
    }
}

impl<T: Send + 'static> std::ops::Deref for OffWorkerDrop<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("the client is taken only on drop")
    }
}

impl<T: Send + 'static> Drop for OffWorkerDrop<T> {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(client))),
            Err(_) => drop(client),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_specs_are_rejected_naming_the_topic() {
        let err = validate(&TopicSpec::new("a b")).unwrap_err().to_string();
        assert!(err.starts_with("topic a b:"), "{err}");
        assert!(validate(&TopicSpec::new("x").with_partitions(0)).is_err());
        assert!(validate(&TopicSpec::new("x").with_replication_factor(0)).is_err());
        assert!(validate(&TopicSpec::new("flowctl.p.c-1_x")).is_ok());
    }
}
