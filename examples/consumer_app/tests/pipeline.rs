//! End to end on the embedded broker: the source, the processor (failing 5% of ledgers on
//! purpose) and the consumer run in-process without a control plane. The consumer's totals must
//! equal the generator's expected events minus the failed ledgers, and the DLQ must hold
//! exactly the failed ledgers, with their DLQ headers.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::collections::BTreeSet;
use std::time::Duration;

use consumer_app::{run_consumer, ConsumerConfig, Totals};
use flowctl_agent::{Agent, AgentConfig, AgentHandle, CancellationToken};
use flowctl_bus::{Consumer, ConsumerOptions, DlqRecord, EmbeddedBroker, TopicSpec};
use prost::Message as _;
use stellar_live_source_datalake::{
    run_source, Generator, RawLedgerChunk, SourceConfig, RAW_LEDGER_CHUNK_EVENT_TYPE,
};
use ttp_processor::{fails_injected, run_processor, ProcessOptions, ProcessorConfig};

const TESTNET: &str = "Test SDF Network ; September 2015";
const FIRST: u32 = 50_000;
const LAST: u32 = 50_199;
const FAIL_FRACTION: f64 = 0.05;
const DEADLINE: Duration = Duration::from_secs(60);

async fn agent(description: flowctl_agent::ComponentDescription) -> AgentHandle {
    Agent::start(
        AgentConfig::default(),
        description,
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_equal_the_expected_events_minus_the_ledgers_in_the_dlq() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let (src, ttp, dlq) = ("flowctl.e2e.src", "flowctl.e2e.ttp", "flowctl.e2e.dlq");
    broker
        .create_topics(&[
            TopicSpec::new(src).with_partitions(3),
            TopicSpec::new(ttp).with_partitions(3),
            TopicSpec::new(dlq).with_partitions(1),
        ])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let totals_file = dir.path().join("totals.json");

    let failed: BTreeSet<u32> = (FIRST..=LAST)
        .filter(|s| fails_injected(*s, FAIL_FRACTION))
        .collect();
    assert!(
        !failed.is_empty() && failed.len() < 40,
        "{} failed",
        failed.len()
    );
    let expected_events: Vec<_> = Generator::new(TESTNET)
        .unwrap()
        .expected_events(FIRST..=LAST)
        .unwrap()
        .into_iter()
        .filter(|e| !failed.contains(&e.ledger_sequence))
        .collect();
    let expected = Totals::of_events(&expected_events).summary();

    let cancel = CancellationToken::new();
    let processor_agent = agent(ttp_processor::description()).await;
    let processor = {
        let config = ProcessorConfig {
            brokers: brokers.clone(),
            input_topics: vec![src.into()],
            dlq_topic: dlq.into(),
            component: "ttp-processor".into(),
            group_id: "flowctl.e2e.ttp-processor".into(),
            process: ProcessOptions {
                output_topic: ttp.into(),
                schema_id: None,
                fail_fraction: FAIL_FRACTION,
            },
        };
        let (agent, cancel) = (processor_agent.clone(), cancel.clone());
        tokio::spawn(async move { run_processor(&config, &agent, &cancel).await })
    };
    let consumer_agent = agent(consumer_app::description()).await;
    let totals = tokio::sync::watch::Sender::new(Totals::default());
    let mut totals_rx = totals.subscribe();
    let consumer = {
        let config = ConsumerConfig {
            brokers: brokers.clone(),
            input_topics: vec![ttp.into()],
            dlq_topic: Some(dlq.into()),
            component: "consumer-app".into(),
            totals_file: Some(totals_file.clone()),
            summary_interval: Duration::from_secs(1),
        };
        let agent = consumer_agent.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { run_consumer(&config, &agent, &cancel, &totals).await })
    };

    let source_config = SourceConfig {
        brokers: brokers.clone(),
        output_topic: src.into(),
        start_ledger: FIRST,
        end_ledger: Some(LAST),
        ledgers_per_second: None,
        network_passphrase: TESTNET.into(),
        job_id: "e2e".into(),
        schema_id: None,
        resume: true,
        live: true,
        replay: Default::default(),
    };
    let source_agent = agent(stellar_live_source_datalake::description()).await;
    let report = tokio::time::timeout(DEADLINE, run_source(&source_config, &source_agent, &cancel))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.last_ledger, Some(LAST));
    assert_eq!(report.produced, u64::from(LAST - FIRST + 1));

    // The consumer's totals reach exactly the expected ones.
    let reached = tokio::time::timeout(
        DEADLINE,
        totals_rx.wait_for(|t| t.events_total >= expected.events_total),
    )
    .await
    .expect("the consumer never saw every expected event")
    .unwrap()
    .summary();
    assert_eq!(reached, expected);
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&totals_file).unwrap()).unwrap();
    assert_eq!(file["events_total"], expected.events_total);
    assert_eq!(file["last_ledger"], LAST);
    // The agent serves the totals on /metrics (and sends the same values in heartbeats).
    let metrics = http_get(consumer_agent.health_addr(), "/metrics").await;
    let line = format!("flowctl_consumer_events_total {}\n", expected.events_total);
    assert!(metrics.contains(&line), "{metrics}");
    assert!(metrics.contains(&format!("flowctl_consumer_last_ledger {LAST}\n")));
    assert!(metrics.contains("flowctl_consumer_fee_amount_native "));

    // The DLQ holds exactly the failed ledgers, with their headers.
    let dlq_reader = Consumer::assign(
        ConsumerOptions::from_beginning(&brokers, vec![dlq.into()]),
        &cancel,
    )
    .await
    .unwrap();
    let mut dead = BTreeSet::new();
    tokio::time::timeout(DEADLINE, async {
        while dead.len() < failed.len() {
            let r = dlq_reader.recv().await.unwrap();
            let meta = DlqRecord::from_headers(&r.headers).unwrap();
            assert_eq!(meta.component, "ttp-processor");
            assert_eq!(meta.source_topic, src);
            assert_eq!(meta.attempt, 1);
            assert_eq!(
                meta.envelope.unwrap().event_type,
                RAW_LEDGER_CHUNK_EVENT_TYPE
            );
            assert!(meta.error.contains("injected failure"), "{}", meta.error);
            let chunk = RawLedgerChunk::decode(r.payload.as_deref().unwrap()).unwrap();
            let ledger = u32::try_from(r.ledger_key().unwrap()).unwrap();
            assert_eq!(chunk.start_ledger, ledger);
            assert!(dead.insert(ledger), "ledger {ledger} is in the DLQ twice");
        }
    })
    .await
    .expect("the DLQ never held every failed ledger");
    assert_eq!(dead, failed);
    let (low, high) = dlq_reader.watermarks(dlq, 0).await.unwrap();
    assert_eq!(high - low, failed.len() as i64, "extra records in the DLQ");

    // The processor's metrics agree, and it stops cleanly, committing its offsets.
    let ledgers_done = processor_agent.counter("flowctl_ttp_ledgers_total");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ledgers_done.get() < u64::from(LAST - FIRST + 1) - failed.len() as u64 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        processor_agent.counter("flowctl_ttp_dlq_total").get(),
        failed.len() as u64
    );
    cancel.cancel();
    processor.await.unwrap().unwrap();
    consumer.await.unwrap().unwrap();
}
