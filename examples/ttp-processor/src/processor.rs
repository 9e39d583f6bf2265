//! The processor loop.
//!
//! ```text
//!  input topic ──▶ channel (bounded) ──▶ process (blocking pool) ──▶ enqueue outputs or DLQ
//!                                                                        │
//!  commit next offsets ◀── done, in input order ◀── acknowledged ◀───────┘
//! ```
//!
//! An input record is done only when every record made from it (its events, or its dead
//! letter) is acknowledged by the broker; only then does its offset become committable. Acks
//! are awaited in input order, so a committed offset never passes an unacknowledged record.
//! A delivery that fails is produced again with backoff until it succeeds or the processor is
//! stopped; a stopped processor commits only what is done, so the rest is read again on restart
//! (at-least-once).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use flowctl_agent::{AgentHandle, CancellationToken};
use flowctl_bus::{BusEnv, Consumer, ConsumerOptions, DlqRecord, Producer, StartAt, TopicSpec};
use futures::stream::{FuturesOrdered, StreamExt as _};

use crate::process::{process, Outcome, ProcessOptions};

/// Records buffered between the consumer and the loop.
pub const CHANNEL_CAPACITY: usize = 256;
/// Input records being produced but not yet acknowledged.
pub const MAX_IN_FLIGHT: usize = 128;
/// How often done offsets are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a stopping processor waits for acknowledgements before committing.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);

/// The processor's configuration (see the crate docs for the variables).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub brokers: String,
    pub input_topics: Vec<String>,
    pub dlq_topic: String,
    /// Written into `flowctl-component` of dead letters.
    pub component: String,
    /// The group under which input offsets are committed.
    pub group_id: String,
    pub process: ProcessOptions,
}

impl ProcessorConfig {
    /// Reads the configuration from `get`; every bad variable is reported.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let bus = BusEnv::from_vars(get)?;
        let mut problems = Vec::new();
        let mut need = |r: Result<&str, flowctl_bus::Error>| match r {
            Ok(v) => v.to_owned(),
            Err(e) => {
                problems.push(e.to_string());
                String::new()
            }
        };
        let output_topic = need(bus.require_output_topic());
        let dlq_topic = need(bus.require_dlq_topic());
        if bus.input_topics.is_empty() {
            problems.push("INPUT_TOPICS is not set".to_owned());
        }
        let fail_fraction = match get("TTP_FAIL_FRACTION") {
            None => 0.0,
            Some(v) => match v.parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => f,
                _ => {
                    problems.push(format!(
                        "TTP_FAIL_FRACTION={v:?}: expected a number in 0.0..=1.0"
                    ));
                    0.0
                }
            },
        };
        if !problems.is_empty() {
            anyhow::bail!("invalid processor environment: {}", problems.join("; "));
        }
        let component = bus
            .component_id
            .clone()
            .unwrap_or_else(|| "ttp-processor".to_owned());
        let group_id = get("CONSUMER_GROUP").unwrap_or_else(|| match &bus.pipeline {
            Some(p) => format!("flowctl.{p}.{component}"),
            None => component.clone(),
        });
        Ok(ProcessorConfig {
            brokers: bus.brokers,
            input_topics: bus.input_topics,
            dlq_topic,
            component,
            group_id,
            process: ProcessOptions {
                output_topic,
                schema_id: get("SCHEMA_ID"),
                fail_fraction,
            },
        })
    }
}

/// Where an input record came from, and what it became.
struct Done {
    topic: String,
    partition: i32,
    offset: i64,
    ledger: Option<u32>,
    events: usize,
    dead: bool,
}

type Pending = Pin<Box<dyn Future<Output = anyhow::Result<Done>> + Send>>;

/// Runs until `cancel` fires; commits what is done before returning.
#[tracing::instrument(name = "ttp_processor", skip_all, fields(component = %config.component))]
pub async fn run_processor(
    config: &ProcessorConfig,
    agent: &AgentHandle,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    flowctl_bus::ensure_topics(
        &config.brokers,
        &[
            TopicSpec::new(&config.process.output_topic),
            TopicSpec::new(&config.dlq_topic),
        ],
        TOPIC_TIMEOUT,
    )
    .await
    .context("while ensuring the output and DLQ topics")?;
    let producer = Producer::new(&config.brokers).context("while creating the producer")?;
    let consumer = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        c = Consumer::assign(
            ConsumerOptions::from_beginning(&config.brokers, config.input_topics.clone())
                .with_group(&config.group_id)
                .with_start(StartAt::Committed),
            cancel,
        ) => c.context("while assigning the input topics")?,
    };
    tracing::info!(partitions = consumer.partitions().len(), group = %config.group_id, "processing");
    let receiving = cancel.child_token();
    let mut rx = consumer
        .clone()
        .into_channel(CHANNEL_CAPACITY, receiving.clone());

    let ledgers = agent.counter("flowctl_ttp_ledgers_total");
    let events = agent.counter("flowctl_ttp_events_total");
    let dead = agent.counter("flowctl_ttp_dlq_total");
    let last_ledger = agent.gauge("flowctl_ttp_last_ledger");
    let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut committable: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let note = |d: Done, committable: &mut BTreeMap<(String, i32), i64>| {
        committable.insert((d.topic, d.partition), d.offset + 1);
        if d.dead {
            dead.inc();
        } else {
            ledgers.inc();
            events.add(d.events as u64);
        }
        if let Some(l) = d.ledger {
            last_ledger.set(f64::from(l).max(last_ledger.get()));
        }
    };

    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => match done {
                Ok(d) => note(d, &mut committable),
                // Only a stop interrupts a delivery; commit what is done below.
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "stopping with undelivered output");
                    break;
                }
            },
            _ = commit_tick.tick() => {
                if !committable.is_empty() {
                    consumer.commit(&committable).context("while committing offsets")?;
                    committable.clear();
                }
            }
            record = rx.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(record) = record else { break };
                in_flight.push_back(handle(config, &producer, record, cancel.clone()).await?);
            }
        }
    }

    // Stop reading, give what is in flight a bounded time, and commit what is done.
    receiving.cancel();
    let drain = async {
        while let Some(done) = in_flight.next().await {
            match done {
                Ok(d) => note(d, &mut committable),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "undelivered at shutdown; it will be read again"
                    );
                    break;
                }
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!(
            "acknowledgements still pending at shutdown; those records will be read again"
        );
    }
    consumer
        .commit_sync(&committable)
        .await
        .context("while committing offsets at shutdown")?;
    Ok(())
}

/// Processes `record` and enqueues what it becomes; the returned future resolves when all of
/// it is acknowledged.
async fn handle(
    config: &ProcessorConfig,
    producer: &Producer,
    record: flowctl_bus::Record,
    cancel: CancellationToken,
) -> anyhow::Result<Pending> {
    let options = config.process.clone();
    // Decoding a ledger is CPU work; keep it off the async workers.
    let (outcome, record) =
        tokio::task::spawn_blocking(move || (process(&record, &options), record))
            .await
            .context("the processing task failed")?;
    let (outputs, ledger, events, dead) = match outcome {
        Outcome::Events { ledger, records } => {
            let n = records.len();
            (records, Some(ledger), n, false)
        }
        Outcome::Dead { reason } => {
            tracing::warn!(
                topic = %record.topic, partition = record.partition, offset = record.offset,
                reason = %reason, "sending to the DLQ"
            );
            let dlq = DlqRecord::for_record(&record, &config.component, reason);
            let ledger = record.ledger_key().ok().and_then(|l| u32::try_from(l).ok());
            (
                vec![dlq.to_out_record(&config.dlq_topic, &record)],
                ledger,
                0,
                true,
            )
        }
    };
    let mut acks = Vec::with_capacity(outputs.len());
    for out in outputs {
        let ack = producer.enqueue(&out).await?;
        acks.push((out, ack));
    }
    let producer = producer.clone();
    let done = Done {
        topic: record.topic,
        partition: record.partition,
        offset: record.offset,
        ledger,
        events,
        dead,
    };
    Ok(Box::pin(async move {
        for (out, ack) in acks {
            let mut result = ack.await;
            let mut backoff = Duration::from_millis(100);
            while let Err(e) = result {
                tracing::warn!(topic = %out.topic, error = %e, "delivery failed; producing again");
                tokio::select! {
                    () = cancel.cancelled() => anyhow::bail!("stopped before a record of offset {} was delivered", done.offset),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                result = producer.send(&out).await;
            }
        }
        Ok(done)
    }))
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
    fn supervisor_environment_gives_topics_group_and_dlq() {
        let c = ProcessorConfig::from_vars(vars(&[
            ("KAFKA_BROKERS", "127.0.0.1:9092"),
            ("INPUT_TOPICS", "flowctl.p.src"),
            ("OUTPUT_TOPIC", "flowctl.p.ttp"),
            ("FLOWCTL_PIPELINE", "p"),
            ("FLOWCTL_COMPONENT_ID", "ttp"),
            ("TTP_FAIL_FRACTION", "0.05"),
        ]))
        .unwrap();
        assert_eq!(c.dlq_topic, "flowctl.p.dlq");
        assert_eq!(c.group_id, "flowctl.p.ttp");
        assert_eq!(c.process.fail_fraction, 0.05);
    }

    #[test]
    fn missing_topics_and_bad_fraction_are_all_reported() {
        let err = ProcessorConfig::from_vars(vars(&[("TTP_FAIL_FRACTION", "2")]))
            .unwrap_err()
            .to_string();
        for var in [
            "OUTPUT_TOPIC",
            "INPUT_TOPICS",
            "DLQ_TOPIC",
            "TTP_FAIL_FRACTION",
        ] {
            assert!(err.contains(var), "{err}");
        }
    }
}
