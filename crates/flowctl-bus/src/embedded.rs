//! An in-process Kafka-protocol broker: librdkafka's mock cluster.
//!
//! It speaks enough of the protocol for producers (idempotent ones too), assigned and
//! group consumers, offset commits and metadata, over real TCP on 127.0.0.1. It keeps records in
//! memory only, and it does not implement CreateTopics (see [`crate::ensure_topics`]).
//!
//! **Ports.** librdkafka 2.12.1 binds every mock broker to `127.0.0.1:0`, so the kernel picks an
//! ephemeral port, and its C API offers no way to choose one (`rd_kafka_mock_broker_new` builds
//! the listen address itself). Read the address from [`EmbeddedBroker::bootstrap_servers`] after
//! starting and hand it to components (`KAFKA_BROKERS`); a fixed port is not possible.
//!
//! The mock cluster's handle must stay on the thread that made it, so the broker runs on a
//! dedicated thread that owns it and serves requests (topic creation, shutdown) from a bounded
//! queue. [`EmbeddedBroker`] itself is `Send` and can live anywhere.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

use crate::{Error, TopicSpec};

/// How many requests may wait for the broker thread.
const REQUEST_QUEUE: usize = 16;

/// The partition count of topics created without one, by auto-creation or by
/// [`EmbeddedBroker::create_topics`] when the spec leaves it out (librdkafka's mock default).
pub const EMBEDDED_DEFAULT_PARTITIONS: u32 = 4;

enum Request {
    CreateTopics(Vec<TopicSpec>, SyncSender<Result<(), Error>>),
    Stop,
}

/// A running mock cluster. Dropping it stops the cluster; clients connected to it see the
/// brokers disappear.
pub struct EmbeddedBroker {
    bootstrap: String,
    requests: SyncSender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts a cluster of `brokers` mock brokers (at least 1), each on its own ephemeral port.
    pub fn start(brokers: u16) -> Result<Self, Error> {
        let brokers = i32::from(brokers.max(1));
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<String, Error>>(1);
        let (req_tx, req_rx) = mpsc::sync_channel::<Request>(REQUEST_QUEUE);
        let thread = std::thread::Builder::new()
            .name("flowctl-embedded-broker".to_owned())
            .spawn(move || serve(brokers, &ready_tx, &req_rx))
            .map_err(|e| Error::Embedded(format!("cannot start the broker thread: {e}")))?;
        let bootstrap = match ready_rx.recv() {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Embedded(
                    "the broker thread stopped while starting".to_owned(),
                ))
            }
        };
        tracing::info!(bootstrap = %bootstrap, brokers, "embedded Kafka broker started");
        Ok(EmbeddedBroker {
            bootstrap,
            requests: req_tx,
            thread: Some(thread),
        })
    }

    /// The `host:port,...` list clients use as `bootstrap.servers` (`KAFKA_BROKERS`).
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates topics with the mock cluster's own API, honouring their partition counts
    /// (replication factors above the broker count are capped to it). A topic that already
    /// exists is left as it is.
    pub fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.requests
            .send(Request::CreateTopics(topics.to_vec(), tx))
            .map_err(|_| Error::Embedded("the broker has stopped".to_owned()))?;
        rx.recv()
            .map_err(|_| Error::Embedded("the broker has stopped".to_owned()))?
    }

    /// Stops the cluster and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.requests.send(Request::Stop);
            if t.join().is_err() {
                tracing::error!("the embedded broker thread panicked");
            }
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(brokers: i32, ready: &SyncSender<Result<String, Error>>, requests: &Receiver<Request>) {
    let cluster = match MockCluster::new(brokers) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(Error::Embedded(format!(
                "cannot start the mock cluster: {e}"
            ))));
            return;
        }
    };
    if ready.send(Ok(cluster.bootstrap_servers())).is_err() {
        return;
    }
    // The loop ends on `Stop` or when the handle is gone; dropping `cluster` closes the
    // listeners.
    while let Ok(req) = requests.recv() {
        match req {
            Request::Stop => break,
            Request::CreateTopics(topics, reply) => {
                let r = topics.iter().try_for_each(|t| {
                    let partitions = t.partitions.unwrap_or(EMBEDDED_DEFAULT_PARTITIONS);
                    let rf = i32::from(t.replication_factor.unwrap_or(1)).min(brokers);
                    let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
                    match cluster.create_topic(&t.name, partitions, rf) {
                        Ok(()) => Ok(()),
                        Err(rdkafka::error::KafkaError::MockCluster(
                            rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                        )) => Ok(()),
                        Err(e) => Err(Error::CreateTopic {
                            topic: t.name.clone(),
                            reason: e.to_string(),
                        }),
                    }
                });
                let _ = reply.send(r);
            }
        }
    }
}
