//! The source loop: generate ledger after ledger and produce each as one record.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use flowctl_agent::{AgentHandle, CancellationToken};
use flowctl_bus::{BusEnv, Delivered, Envelope, OutRecord, Producer, TopicSpec};
use prost::Message as _;

use crate::proto::{RawLedgerChunk, RAW_LEDGER_CHUNK_EVENT_TYPE};
use crate::replay::ReplayConfig;
use crate::synthetic::Generator;

/// The passphrase when `NETWORK_PASSPHRASE` is not set: Stellar's testnet.
pub const DEFAULT_NETWORK_PASSPHRASE: &str = "Test SDF Network ; September 2015";
/// The pace when `END_LEDGER` is not set and `LEDGERS_PER_SECOND` is not either.
pub const DEFAULT_UNBOUNDED_PACE: f64 = 1.0;
/// The most records produced but not yet acknowledged.
pub const MAX_IN_FLIGHT: usize = 64;
/// How long `ensure_topics` may take at start-up.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);

/// The source's configuration (see the crate docs for the variables).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub brokers: String,
    pub output_topic: String,
    pub start_ledger: u32,
    /// Inclusive; `None` keeps going.
    pub end_ledger: Option<u32>,
    /// `None` produces as fast as the broker acknowledges.
    pub ledgers_per_second: Option<f64>,
    pub network_passphrase: String,
    pub job_id: String,
    pub schema_id: Option<String>,
    /// Continue after the last ledger already in the output topic instead of `start_ledger`.
    pub resume: bool,
    /// Run the live stream (`LIVE`, default true); false serves chunk commands only.
    pub live: bool,
    pub replay: ReplayConfig,
}

impl SourceConfig {
    /// Reads the configuration from `get` (the environment in `main`). Every bad variable is
    /// reported, not only the first.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let bus = BusEnv::from_vars(get)?;
        let mut problems = Vec::new();
        let mut num = |var: &str, v: Option<String>| -> Option<u32> {
            let v = v?;
            match v.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    problems.push(format!("{var}={v:?}: expected a ledger sequence"));
                    None
                }
            }
        };
        let start_ledger = num("START_LEDGER", get("START_LEDGER")).unwrap_or(2);
        let end_ledger = num("END_LEDGER", get("END_LEDGER"));
        let pace = match get("LEDGERS_PER_SECOND") {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(p) if p > 0.0 && p.is_finite() => Some(p),
                _ => {
                    problems.push(format!(
                        "LEDGERS_PER_SECOND={v:?}: expected a positive number"
                    ));
                    None
                }
            },
        };
        let mut flag = |var: &str| match get(var).as_deref() {
            None | Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(v) => {
                problems.push(format!("{var}={v:?}: expected true or false"));
                true
            }
        };
        let resume = flag("RESUME");
        let live = flag("LIVE");
        let replay = ReplayConfig::from_vars(get, &mut problems);
        if let Some(end) = end_ledger {
            if end < start_ledger {
                problems.push(format!(
                    "END_LEDGER={end} is before START_LEDGER={start_ledger}"
                ));
            }
        }
        let output_topic = match bus.require_output_topic() {
            Ok(t) => t.to_owned(),
            Err(e) => {
                problems.push(e.to_string());
                String::new()
            }
        };
        if !problems.is_empty() {
            anyhow::bail!("invalid source environment: {}", problems.join("; "));
        }
        Ok(SourceConfig {
            brokers: bus.brokers,
            output_topic,
            start_ledger,
            end_ledger,
            ledgers_per_second: pace.or(if end_ledger.is_none() {
                Some(DEFAULT_UNBOUNDED_PACE)
            } else {
                None
            }),
            network_passphrase: get("NETWORK_PASSPHRASE")
                .unwrap_or_else(|| DEFAULT_NETWORK_PASSPHRASE.to_owned()),
            job_id: get("JOB_ID")
                .or(bus.component_id)
                .unwrap_or_else(|| "stellar-live-source-datalake".to_owned()),
            schema_id: get("SCHEMA_ID"),
            resume,
            live,
            replay,
        })
    }
}

/// What a finished (or stopped) run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceReport {
    pub first_ledger: u32,
    /// The last ledger acknowledged, if any.
    pub last_ledger: Option<u32>,
    pub produced: u64,
}

/// The record for one ledger.
pub fn ledger_record(
    generator: &Generator,
    config: &SourceConfig,
    sequence: u32,
) -> anyhow::Result<OutRecord> {
    build_record(generator, config, sequence, &config.job_id)
}

/// The record for one ledger, written for `job_id`.
pub(crate) fn build_record(
    generator: &Generator,
    config: &SourceConfig,
    sequence: u32,
    job_id: &str,
) -> anyhow::Result<OutRecord> {
    let ledger = generator
        .ledger(sequence)
        .with_context(|| format!("while generating ledger {sequence}"))?;
    let chunk = RawLedgerChunk {
        start_ledger: sequence,
        end_ledger: sequence,
        ledger_close_meta_xdr: ledger
            .to_xdr()
            .with_context(|| format!("while encoding ledger {sequence}"))?,
        network_passphrase: config.network_passphrase.clone(),
        close_time_unix: ledger.close_time_unix,
        job_id: job_id.to_owned(),
    };
    let mut envelope = Envelope::new(RAW_LEDGER_CHUNK_EVENT_TYPE);
    envelope.schema_id = config.schema_id.clone();
    Ok(OutRecord::new(&config.output_topic, chunk.encode_to_vec())
        .with_ledger_key(u64::from(sequence))
        .with_envelope(&envelope))
}

type Ack = Pin<Box<dyn Future<Output = Result<Delivered, flowctl_bus::Error>> + Send>>;

/// Produces ledgers from the start (or resume point) to the end ledger, or until `cancel`
/// fires. Returns once every produced record is acknowledged.
#[tracing::instrument(name = "source", skip_all, fields(topic = %config.output_topic))]
pub async fn run_source(
    config: &SourceConfig,
    agent: &AgentHandle,
    cancel: &CancellationToken,
) -> anyhow::Result<SourceReport> {
    let generator = Generator::new(&config.network_passphrase)
        .context("while setting up the ledger generator")?;
    flowctl_bus::ensure_topics(
        &config.brokers,
        &[TopicSpec::new(&config.output_topic)],
        TOPIC_TIMEOUT,
    )
    .await
    .context("while ensuring the output topic")?;
    let first = if config.resume {
        resume_point(config, cancel).await?
    } else {
        config.start_ledger
    };
    tracing::info!(first, end = ?config.end_ledger, pace = ?config.ledgers_per_second, "producing ledgers");

    let producer = Producer::new(&config.brokers).context("while creating the producer")?;
    let produced = agent.counter("flowctl_source_ledgers_total");
    let bytes = agent.counter("flowctl_source_bytes_total");
    let last_gauge = agent.gauge("flowctl_source_last_ledger");
    let mut pace = config
        .ledgers_per_second
        .map(|p| tokio::time::interval(Duration::from_secs_f64(1.0 / p)));
    let mut in_flight: VecDeque<(u32, OutRecord, Ack)> = VecDeque::new();
    let mut report = SourceReport {
        first_ledger: first,
        last_ledger: None,
        produced: 0,
    };

    let mut next = Some(first);
    while let Some(seq) = next.filter(|s| config.end_ledger.is_none_or(|end| *s <= end)) {
        if cancel.is_cancelled() {
            break;
        }
        if let Some(p) = pace.as_mut() {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = p.tick() => {}
            }
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            if let Some((s, rec, ack)) = in_flight.pop_front() {
                settle(&producer, s, rec, ack, cancel).await?;
                note(&mut report, s);
            }
        }
        let record = ledger_record(&generator, config, seq)?;
        bytes.add(record.payload.len() as u64);
        let ack = producer.enqueue(&record).await?;
        in_flight.push_back((seq, record, Box::pin(ack)));
        produced.inc();
        last_gauge.set(f64::from(seq));
        next = seq.checked_add(1);
    }
    while let Some((s, rec, ack)) = in_flight.pop_front() {
        settle(&producer, s, rec, ack, cancel).await?;
        note(&mut report, s);
    }
    report.produced = report.last_ledger.map_or(0, |l| u64::from(l - first) + 1);
    tracing::info!(?report, "source finished");
    Ok(report)
}

fn note(report: &mut SourceReport, seq: u32) {
    report.last_ledger = Some(report.last_ledger.map_or(seq, |l| l.max(seq)));
}

/// Waits for `ack`; a failed delivery is produced again (with backoff) until it succeeds or
/// the source is cancelled, so no ledger is skipped.
async fn settle(
    producer: &Producer,
    seq: u32,
    record: OutRecord,
    ack: Ack,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut result = ack.await;
    let mut backoff = Duration::from_millis(100);
    while let Err(e) = result {
        tracing::warn!(ledger = seq, error = %e, "delivery failed; producing the ledger again");
        tokio::select! {
            () = cancel.cancelled() => anyhow::bail!("cancelled while ledger {seq} was undelivered"),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        result = producer.send(&record).await;
    }
    Ok(())
}

/// Where to start: after the newest ledger already in the output topic, if that is past
/// `start_ledger`.
async fn resume_point(config: &SourceConfig, cancel: &CancellationToken) -> anyhow::Result<u32> {
    let last = flowctl_bus::last_records(&config.brokers, &config.output_topic, cancel)
        .await
        .context("while reading the last ledgers of the output topic")?;
    let newest = last.iter().filter_map(|r| r.ledger_key().ok()).max();
    Ok(match newest {
        Some(n) if n >= u64::from(config.start_ledger) => {
            let next = u32::try_from(n + 1).unwrap_or(u32::MAX);
            tracing::info!(
                newest = n,
                next,
                "resuming after the newest ledger in the topic"
            );
            next
        }
        _ => config.start_ledger,
    })
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
    fn bounded_range_runs_unpaced_and_unbounded_gets_a_pace() {
        let c = SourceConfig::from_vars(vars(&[
            ("OUTPUT_TOPIC", "flowctl.p.src"),
            ("START_LEDGER", "10"),
            ("END_LEDGER", "20"),
        ]))
        .unwrap();
        assert_eq!(
            (c.start_ledger, c.end_ledger, c.ledgers_per_second),
            (10, Some(20), None)
        );
        assert_eq!(c.network_passphrase, DEFAULT_NETWORK_PASSPHRASE);
        let c = SourceConfig::from_vars(vars(&[("OUTPUT_TOPIC", "t"), ("START_LEDGER", "10")]))
            .unwrap();
        assert_eq!(c.ledgers_per_second, Some(DEFAULT_UNBOUNDED_PACE));
        assert!(c.live);
        assert_eq!(c.replay, ReplayConfig::default());
    }

    #[test]
    fn live_can_be_turned_off_for_a_replay_only_source() {
        let c = SourceConfig::from_vars(vars(&[
            ("OUTPUT_TOPIC", "t"),
            ("LIVE", "false"),
            ("REPLAY_CONCURRENCY", "4"),
        ]))
        .unwrap();
        assert!(!c.live);
        assert_eq!(c.replay.concurrency, 4);
        let err = SourceConfig::from_vars(vars(&[("OUTPUT_TOPIC", "t"), ("LIVE", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("LIVE"), "{err}");
    }

    #[test]
    fn every_bad_variable_is_reported() {
        let err =
            SourceConfig::from_vars(vars(&[("START_LEDGER", "x"), ("LEDGERS_PER_SECOND", "-1")]))
                .unwrap_err()
                .to_string();
        for var in ["START_LEDGER", "LEDGERS_PER_SECOND", "OUTPUT_TOPIC"] {
            assert!(err.contains(var), "{err}");
        }
    }
}
