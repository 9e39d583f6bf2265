//! The consumer loop: read every event from the beginning, keep totals, publish them.
//!
//! The totals live in memory only, so the consumer always reads its inputs from the beginning
//! (no committed offsets): after a restart it recomputes the same totals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use flowctl_agent::{AgentHandle, CancellationToken, Counter, Gauge};
use flowctl_bus::{BusEnv, Consumer, ConsumerOptions, DlqRecord, Producer, Record};
use prost::Message as _;
use stellar_live_source_datalake::TokenEvent;
use tokio::sync::watch;
use ttp_processor::{TokenTransferEvent, TOKEN_TRANSFER_EVENT_TYPE};

use crate::totals::Totals;

/// Records buffered between the Kafka consumer and the loop.
pub const CHANNEL_CAPACITY: usize = 1024;
/// The most records applied before totals are published (file, metrics, watchers).
pub const MAX_BATCH: usize = 1024;
/// The most assets that get their own amount gauges; the rest are in the file and logs only,
/// so that data cannot grow the metric set without bound.
pub const MAX_ASSET_METRICS: usize = 32;
/// The summary log interval when `SUMMARY_INTERVAL_SECS` is not set.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// The consumer's configuration (see the crate docs for the variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    pub brokers: String,
    pub input_topics: Vec<String>,
    /// Where undecodable records go; `None` only counts them.
    pub dlq_topic: Option<String>,
    pub component: String,
    pub totals_file: Option<PathBuf>,
    pub summary_interval: Duration,
}

impl ConsumerConfig {
    /// Reads the configuration from `get`; every bad variable is reported.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let bus = BusEnv::from_vars(get)?;
        let mut problems = Vec::new();
        if bus.input_topics.is_empty() {
            problems.push("INPUT_TOPICS is not set".to_owned());
        }
        let summary_interval = match get("SUMMARY_INTERVAL_SECS") {
            None => DEFAULT_SUMMARY_INTERVAL,
            Some(v) => match v.parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
                _ => {
                    problems.push(format!(
                        "SUMMARY_INTERVAL_SECS={v:?}: expected a positive number of seconds"
                    ));
                    DEFAULT_SUMMARY_INTERVAL
                }
            },
        };
        if !problems.is_empty() {
            anyhow::bail!("invalid consumer environment: {}", problems.join("; "));
        }
        Ok(ConsumerConfig {
            brokers: bus.brokers,
            input_topics: bus.input_topics,
            dlq_topic: bus.dlq_topic,
            component: bus
                .component_id
                .unwrap_or_else(|| "consumer-app".to_owned()),
            totals_file: get("TOTALS_FILE").map(PathBuf::from),
            summary_interval,
        })
    }
}

/// The agent metrics the totals are mirrored into (served on `/metrics`, sent in heartbeats).
struct Metrics {
    agent: AgentHandle,
    events: Counter,
    by_kind: BTreeMap<String, Counter>,
    ledgers_seen: Gauge,
    last_ledger: Gauge,
    undecodable: Counter,
    amounts: BTreeMap<(String, String), Gauge>,
}

impl Metrics {
    fn new(agent: &AgentHandle) -> Self {
        Metrics {
            agent: agent.clone(),
            events: agent.counter("flowctl_consumer_events_total"),
            by_kind: BTreeMap::new(),
            ledgers_seen: agent.gauge("flowctl_consumer_ledgers_seen"),
            last_ledger: agent.gauge("flowctl_consumer_last_ledger"),
            undecodable: agent.counter("flowctl_consumer_undecodable_total"),
            amounts: BTreeMap::new(),
        }
    }

    fn count(&mut self, kind: &str) {
        self.events.inc();
        let agent = &self.agent;
        self.by_kind
            .entry(kind.to_owned())
            .or_insert_with(|| agent.counter(&format!("flowctl_consumer_{kind}_events_total")))
            .inc();
    }

    fn publish(&mut self, totals: &Totals) {
        self.ledgers_seen.set(totals.ledgers_seen as f64);
        self.last_ledger.set(f64::from(totals.last_ledger));
        for (asset, kinds) in totals.amounts.iter().take(MAX_ASSET_METRICS) {
            for (kind, amount) in kinds {
                let agent = &self.agent;
                self.amounts
                    .entry((asset.clone(), kind.clone()))
                    .or_insert_with(|| {
                        agent.gauge(&format!("flowctl_consumer_{kind}_amount_{asset}"))
                    })
                    // A gauge is an f64: exact up to 2^53, close enough beyond for a dashboard.
                    .set(*amount as f64);
            }
        }
    }
}

/// Decodes one event record.
pub fn decode(record: &Record) -> Result<TokenEvent, String> {
    let envelope = record.envelope().map_err(|e| e.to_string())?;
    if envelope.event_type != TOKEN_TRANSFER_EVENT_TYPE {
        return Err(format!(
            "unexpected event type {:?} (expected {TOKEN_TRANSFER_EVENT_TYPE})",
            envelope.event_type
        ));
    }
    let event = TokenTransferEvent::decode(record.payload.as_deref().unwrap_or_default())
        .map_err(|e| format!("bad TokenTransferEvent protobuf: {e}"))?;
    TokenEvent::try_from(&event)
}

/// Runs until `cancel` fires, publishing the totals to `totals` after every batch.
#[tracing::instrument(name = "consumer_app", skip_all, fields(component = %config.component))]
pub async fn run_consumer(
    config: &ConsumerConfig,
    agent: &AgentHandle,
    cancel: &CancellationToken,
    totals: &watch::Sender<Totals>,
) -> anyhow::Result<()> {
    let consumer = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        c = Consumer::assign(
            ConsumerOptions::from_beginning(&config.brokers, config.input_topics.clone()),
            cancel,
        ) => c.context("while assigning the input topics")?,
    };
    let producer = match &config.dlq_topic {
        Some(_) => Some(Producer::new(&config.brokers).context("while creating the DLQ producer")?),
        None => None,
    };
    tracing::info!(partitions = consumer.partitions().len(), "consuming");
    let mut rx = consumer.into_channel(CHANNEL_CAPACITY, cancel.child_token());
    let mut metrics = Metrics::new(agent);
    let mut current = Totals::default();
    let mut summary = tokio::time::interval(config.summary_interval);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    summary.tick().await;

    loop {
        let first = tokio::select! {
            () = cancel.cancelled() => break,
            _ = summary.tick() => {
                tracing::info!("totals: {}", current.summary_line());
                continue;
            }
            r = rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Some(r) => batch.push(r),
                None => break,
            }
        }
        for record in &batch {
            match decode(record) {
                Ok(event) => {
                    metrics.count(event.kind.name());
                    current.apply(&record.topic, record.partition, &event);
                }
                Err(reason) => {
                    current.undecodable += 1;
                    metrics.undecodable.inc();
                    dead_letter(config, producer.as_ref(), record, reason, cancel).await?;
                }
            }
        }
        metrics.publish(&current);
        if let Some(path) = &config.totals_file {
            write_atomically(path, &current.to_json())
                .await
                .with_context(|| format!("while writing {}", path.display()))?;
        }
        totals.send_replace(current.clone());
    }
    tracing::info!("final totals: {}", current.summary_line());
    Ok(())
}

async fn dead_letter(
    config: &ConsumerConfig,
    producer: Option<&Producer>,
    record: &Record,
    reason: String,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    tracing::warn!(
        topic = %record.topic, partition = record.partition, offset = record.offset,
        reason = %reason, "undecodable event"
    );
    let (Some(producer), Some(topic)) = (producer, &config.dlq_topic) else {
        return Ok(());
    };
    let out = DlqRecord::for_record(record, &config.component, reason).to_out_record(topic, record);
    let mut backoff = Duration::from_millis(100);
    loop {
        match producer.send(&out).await {
            Ok(_) => return Ok(()),
            Err(e) => tracing::warn!(error = %e, "DLQ delivery failed; retrying"),
        }
        tokio::select! {
            () = cancel.cancelled() => anyhow::bail!("stopped before a dead letter was delivered"),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Replaces `path` with `contents` so that a reader never sees a partial file.
pub async fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, contents).await?;
    tokio::fs::rename(&tmp, path).await
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
    fn configuration_from_the_supervisor_environment() {
        let c = ConsumerConfig::from_vars(vars(&[
            ("INPUT_TOPICS", "flowctl.p.ttp"),
            ("FLOWCTL_PIPELINE", "p"),
            ("TOTALS_FILE", "/tmp/t.json"),
        ]))
        .unwrap();
        assert_eq!(c.dlq_topic.as_deref(), Some("flowctl.p.dlq"));
        assert_eq!(c.totals_file.as_deref(), Some(Path::new("/tmp/t.json")));
        let err = ConsumerConfig::from_vars(vars(&[("SUMMARY_INTERVAL_SECS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("INPUT_TOPICS") && err.contains("SUMMARY_INTERVAL_SECS"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn totals_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("totals.json");
        write_atomically(&path, "{\"a\":1}").await.unwrap();
        write_atomically(&path, "{\"a\":2}").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":2}");
        assert!(!dir.path().join("totals.json.tmp").exists());
    }
}
