//! The producer and consumer the components share.
//!
//! The producer is idempotent with `acks=all`, so a record is acknowledged only once every
//! in-sync replica has it, and retries cannot reorder or duplicate records within a partition.
//! The consumer does not join a consumer group: it `assign`s every partition of its topics,
//! which starts in well under a second and needs no group coordinator. A group id is still
//! used, when given, to store and read committed offsets.
//!
//! Every queue is bounded: librdkafka's producer queue ([`PRODUCER_QUEUE_MESSAGES`]) and
//! prefetch buffer ([`CONSUMER_PREFETCH_KBYTES`] per partition), and the record channel
//! ([`Consumer::into_channel`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{blocking, OffWorkerDrop};
use crate::envelope::{Envelope, Headers};
use crate::Error;

/// The most records librdkafka's producer queue holds before `enqueue` waits.
pub const PRODUCER_QUEUE_MESSAGES: u32 = 10_000;
/// How long the producer keeps retrying a record before failing its delivery.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The most data librdkafka prefetches per assigned partition.
pub const CONSUMER_PREFETCH_KBYTES: u32 = 8 * 1024;
/// How long [`Consumer::assign`] waits between looks for topics that do not exist yet.
const TOPIC_WAIT_POLL: Duration = Duration::from_millis(200);
/// How long the producer waits between tries while its queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Headers,
}

impl OutRecord {
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        OutRecord {
            topic: topic.into(),
            key: None,
            payload: payload.into(),
            headers: Headers::new(),
        }
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Keys the record by ledger sequence (see [`ledger_key`](crate::ledger_key)).
    pub fn with_ledger_key(self, sequence: u64) -> Self {
        self.with_key(crate::ledger_key(sequence))
    }

    pub fn with_envelope(mut self, envelope: &Envelope) -> Self {
        envelope.write_to(&mut self.headers);
        self
    }

    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.set(name, value);
        self
    }
}

/// A consumed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Headers,
    /// Milliseconds since the Unix epoch, when the broker reports a timestamp.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn envelope(&self) -> Result<Envelope, Error> {
        Envelope::from_headers(&self.headers)
    }

    /// The ledger sequence in the key; an error if there is no key or it is not one.
    pub fn ledger_key(&self) -> Result<u64, Error> {
        match &self.key {
            Some(k) => crate::parse_ledger_key(k),
            None => Err(Error::BadKey {
                key: String::new(),
                reason: "the record has no key".to_owned(),
            }),
        }
    }

    fn from_message(m: &impl rdkafka::Message) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent producer. Cloning gives another handle to the same producer.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<OffWorkerDrop<FutureProducer>>,
    brokers: String,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl Producer {
    /// A producer for `brokers` (a comma-separated `host:port` list). Creating it can block
    /// (see [`connect`](Self::connect) for async code).
    pub fn new(brokers: &str) -> Result<Self, Error> {
        Self::with_config(brokers, &[])
    }

    /// Like [`new`](Self::new), created on the blocking pool: librdkafka's client creation
    /// can wait a long time for its threads (a minute after a clock step was seen), which
    /// must not stall an async worker of a server.
    pub async fn connect(brokers: &str) -> Result<Self, Error> {
        let brokers = brokers.to_owned();
        blocking(move || Self::new(&brokers)).await
    }

    /// Like [`new`](Self::new), with librdkafka properties that override the defaults.
    pub fn with_config(brokers: &str, overrides: &[(&str, &str)]) -> Result<Self, Error> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "queue.buffering.max.messages",
                PRODUCER_QUEUE_MESSAGES.to_string(),
            )
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        for (k, v) in overrides {
            config.set(*k, *v);
        }
        let inner = config.create().map_err(|source| Error::Client {
            brokers: brokers.to_owned(),
            source,
        })?;
        Ok(Producer {
            inner: Arc::new(OffWorkerDrop::new(inner)),
            brokers: brokers.to_owned(),
        })
    }

    /// Puts `record` on the producer's queue, waiting while the queue is full, and returns a
    /// future that resolves when the broker acknowledges it (or delivery finally fails).
    /// Records enqueued one after another keep their order within a partition, so a caller
    /// can enqueue many and await their acknowledgements in order.
    pub async fn enqueue(
        &self,
        record: &OutRecord,
    ) -> Result<impl Future<Output = Result<Delivered, Error>> + Send + 'static, Error> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in record.headers.iter() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&record.topic)
            .payload(&record.payload[..])
            .headers(headers);
        if let Some(k) = &record.key {
            fr = fr.key(&k[..]);
        }
        let delivery = loop {
            match self.inner.send_result(fr) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    fr = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((source, _)) => {
                    return Err(Error::Produce {
                        topic: record.topic.clone(),
                        source,
                    })
                }
            }
        };
        let topic = record.topic.clone();
        Ok(async move {
            match delivery.await {
                Ok(Ok(d)) => Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((source, _))) => Err(Error::Produce { topic, source }),
                // The producer dropped the delivery report: it is shutting down.
                Err(_) => Err(Error::Produce {
                    topic,
                    source: KafkaError::Canceled,
                }),
            }
        })
    }

    /// Produces `record` and waits for its acknowledgement.
    pub async fn send(&self, record: &OutRecord) -> Result<Delivered, Error> {
        self.enqueue(record).await?.await
    }

    /// Waits until every queued record is delivered or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let p = self.inner.clone();
        blocking(move || {
            p.flush(timeout).map_err(|source| Error::Produce {
                topic: String::new(),
                source,
            })
        })
        .await
    }
}

/// Where an assigned consumer starts in each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// The first record still retained.
    Beginning,
    /// Only records produced after the assignment.
    End,
    /// The group's committed offset, or the beginning where none is committed. Needs
    /// [`ConsumerOptions::group_id`].
    Committed,
    /// The given next offsets per `(topic, partition)`; other partitions start at the beginning.
    Offsets(BTreeMap<(String, i32), i64>),
}

/// What [`Consumer::assign`] needs.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub brokers: String,
    pub topics: Vec<String>,
    /// The group under which offsets are committed and read. The consumer never joins it.
    pub group_id: Option<String>,
    pub start: StartAt,
}

impl ConsumerOptions {
    /// Reads every partition of `topics` from the beginning, committing nothing.
    pub fn from_beginning(brokers: impl Into<String>, topics: Vec<String>) -> Self {
        ConsumerOptions {
            brokers: brokers.into(),
            topics,
            group_id: None,
            start: StartAt::Beginning,
        }
    }

    pub fn with_group(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    pub fn with_start(mut self, start: StartAt) -> Self {
        self.start = start;
        self
    }
}

/// A consumer assigned to every partition of its topics. Cloning gives another handle to the
/// same consumer, so one clone can commit while another receives.
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<OffWorkerDrop<StreamConsumer>>,
    partitions: Arc<Vec<(String, i32)>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl Consumer {
    /// Creates the consumer and assigns it every partition of `options.topics`. A topic that
    /// does not exist yet is waited for (its producer may not have started), until `cancel`
    /// fires. Partitions added to a topic later are not picked up.
    pub async fn assign(
        options: ConsumerOptions,
        cancel: &CancellationToken,
    ) -> Result<Self, Error> {
        if options.topics.is_empty() {
            return Err(Error::Config(
                "a consumer needs at least one topic".to_owned(),
            ));
        }
        if options.start == StartAt::Committed && options.group_id.is_none() {
            return Err(Error::Config(
                "starting at committed offsets needs a group id".to_owned(),
            ));
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            // The group is only a namespace for committed offsets: `assign` never joins it.
            .set(
                "group.id",
                options
                    .group_id
                    .as_deref()
                    .unwrap_or("flowctl-bus-uncommitted"),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "queued.max.messages.kbytes",
                CONSUMER_PREFETCH_KBYTES.to_string(),
            )
            .set("fetch.wait.max.ms", "100");
        // librdkafka's client creation blocks (up to a minute waiting for its threads), so it
        // must not run on an async worker.
        let brokers = options.brokers.clone();
        let consumer: StreamConsumer = blocking(move || {
            config
                .create()
                .map_err(|source| Error::Client { brokers, source })
        })
        .await?;
        let consumer = Arc::new(OffWorkerDrop::new(consumer));

        let mut partitions = Vec::new();
        for topic in &options.topics {
            let count = wait_for_partitions(&consumer, topic, cancel).await?;
            partitions.extend((0..count).map(|p| (topic.clone(), p)));
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in &partitions {
            let offset = match &options.start {
                StartAt::Beginning => Offset::Beginning,
                StartAt::End => Offset::End,
                StartAt::Committed => Offset::Stored,
                StartAt::Offsets(map) => map
                    .get(&(topic.clone(), *p))
                    .map_or(Offset::Beginning, |o| Offset::Offset(*o)),
            };
            tpl.add_partition_offset(topic, *p, offset)
                .map_err(|source| Error::Consume { source })?;
        }
        consumer
            .assign(&tpl)
            .map_err(|source| Error::Consume { source })?;
        tracing::debug!(?partitions, "consumer assigned");
        Ok(Consumer {
            inner: consumer,
            partitions: Arc::new(partitions),
        })
    }

    /// The assigned `(topic, partition)` pairs.
    pub fn partitions(&self) -> &[(String, i32)] {
        &self.partitions
    }

    /// The next record from any assigned partition.
    pub async fn recv(&self) -> Result<Record, Error> {
        let m = self
            .inner
            .recv()
            .await
            .map_err(|source| Error::Consume { source })?;
        Ok(Record::from_message(&m))
    }

    /// Commits `next_offsets` (the offset of the next record to read, per partition) for the
    /// consumer's group, without waiting for the broker.
    pub fn commit(&self, next_offsets: &BTreeMap<(String, i32), i64>) -> Result<(), Error> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        self.inner
            .commit(&offset_list(next_offsets)?, CommitMode::Async)
            .map_err(|source| Error::Consume { source })
    }

    /// Like [`commit`](Self::commit), but waits until the broker has stored the offsets (for
    /// shutdown).
    pub async fn commit_sync(
        &self,
        next_offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), Error> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        let tpl = offset_list(next_offsets)?;
        let c = self.inner.clone();
        blocking(move || {
            c.commit(&tpl, CommitMode::Sync)
                .map_err(|source| Error::Consume { source })
        })
        .await
    }

    /// The low and high watermarks of one partition (the high one is the next offset to be
    /// written).
    pub async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), Error> {
        let c = self.inner.clone();
        let topic = topic.to_owned();
        blocking(move || {
            c.fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .map_err(|source| Error::Consume { source })
        })
        .await
    }

    /// Moves receiving into a task that feeds a channel of `capacity` records; the channel
    /// being full stops fetching (backpressure). The task ends when `cancel` fires or the
    /// receiver is dropped. Consume errors are logged and retried with a backoff, since
    /// librdkafka recovers from broker failures by itself.
    pub fn into_channel(self, capacity: usize, cancel: CancellationToken) -> RecordReceiver {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let consumer = self.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let r = tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tx.closed() => return,
                    r = consumer.recv() => r,
                };
                match r {
                    Ok(record) => {
                        backoff = Duration::from_millis(50);
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            sent = tx.send(record) => if sent.is_err() { return },
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consume error; retrying");
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
        RecordReceiver {
            rx,
            task,
            consumer: self,
        }
    }
}

/// The receiving end of [`Consumer::into_channel`]. Dropping it stops the receiving task.
#[derive(Debug)]
pub struct RecordReceiver {
    rx: mpsc::Receiver<Record>,
    task: tokio::task::JoinHandle<()>,
    consumer: Consumer,
}

impl RecordReceiver {
    /// The next record; `None` once the receiving task has stopped.
    pub async fn recv(&mut self) -> Option<Record> {
        self.rx.recv().await
    }

    /// The next record if one is waiting, without waiting for one.
    pub fn try_recv(&mut self) -> Option<Record> {
        self.rx.try_recv().ok()
    }

    /// The consumer, for commits and watermarks.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }
}

impl Drop for RecordReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn offset_list(next_offsets: &BTreeMap<(String, i32), i64>) -> Result<TopicPartitionList, Error> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), o) in next_offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(|source| Error::Consume { source })?;
    }
    Ok(tpl)
}

/// Waits until `topic` has partitions in the metadata; returns how many.
async fn wait_for_partitions(
    consumer: &Arc<OffWorkerDrop<StreamConsumer>>,
    topic: &str,
    cancel: &CancellationToken,
) -> Result<i32, Error> {
    let mut logged = false;
    loop {
        let c = consumer.clone();
        let t = topic.to_owned();
        let count = blocking(move || {
            Ok(c.fetch_metadata(Some(&t), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics()
                        .iter()
                        .find(|mt| mt.name() == t && mt.error().is_none())
                        .map(|mt| mt.partitions().len())
                })
                .unwrap_or(0))
        })
        .await?;
        if count > 0 {
            return i32::try_from(count)
                .map_err(|_| Error::Config(format!("topic {topic}: too many partitions")));
        }
        if !logged {
            tracing::info!(topic, "waiting for the topic to exist");
            logged = true;
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(Error::Cancelled),
            () = tokio::time::sleep(TOPIC_WAIT_POLL) => {}
        }
    }
}

/// How long [`last_records`] waits for the records it found in the watermarks.
const LAST_RECORDS_TIMEOUT: Duration = Duration::from_secs(30);

/// The last record of each non-empty partition of `topic` (for example, to find where a
/// source stopped). Waits for the topic to exist, until `cancel` fires.
pub async fn last_records(
    brokers: &str,
    topic: &str,
    cancel: &CancellationToken,
) -> Result<Vec<Record>, Error> {
    let probe = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec![topic.to_owned()]).with_start(StartAt::End),
        cancel,
    )
    .await?;
    let mut offsets = BTreeMap::new();
    for (t, p) in probe.partitions().to_vec() {
        let (low, high) = probe.watermarks(&t, p).await?;
        if high > low {
            offsets.insert((t, p), high - 1);
        }
    }
    drop(probe);
    if offsets.is_empty() {
        return Ok(Vec::new());
    }
    let wanted = offsets.len();
    // Partitions without records would otherwise start at the beginning and deliver nothing,
    // which is fine: only the wanted ones produce a record at their last offset.
    let c = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec![topic.to_owned()])
            .with_start(StartAt::Offsets(offsets.clone())),
        cancel,
    )
    .await?;
    let mut out: BTreeMap<(String, i32), Record> = BTreeMap::new();
    let collect = async {
        while out.len() < wanted {
            let r = c.recv().await?;
            let k = (r.topic.clone(), r.partition);
            if offsets.get(&k) == Some(&r.offset) {
                out.insert(k, r);
            }
        }
        Ok::<(), Error>(())
    };
    tokio::select! {
        () = cancel.cancelled() => return Err(Error::Cancelled),
        r = tokio::time::timeout(LAST_RECORDS_TIMEOUT, collect) => match r {
            Ok(r) => r?,
            // A record below the high watermark can vanish (retention, compaction).
            Err(_) => return Err(Error::Config(format!(
                "topic {topic}: the last records were not readable within {LAST_RECORDS_TIMEOUT:?}"
            ))),
        },
    }
    Ok(out.into_values().collect())
}
