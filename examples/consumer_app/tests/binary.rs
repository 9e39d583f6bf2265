//! The `consumer_app` binary, standalone (no control plane), against the embedded broker: its
//! totals file reaches the expected totals, and SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::process::Stdio;
use std::time::Duration;

use consumer_app::Totals;
use flowctl_bus::{EmbeddedBroker, Producer, Record};
use stellar_live_source_datalake::{ledger_record, Generator, SourceConfig};
use tokio::process::Command;
use ttp_processor::{process, Outcome, ProcessOptions};

const DEADLINE: Duration = Duration::from_secs(30);
const TESTNET: &str = "Test SDF Network ; September 2015";

#[tokio::test]
async fn totals_file_reaches_the_expected_totals() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let producer = Producer::new(brokers).unwrap();
    let generator = Generator::new(TESTNET).unwrap();
    let source =
        SourceConfig::from_vars(|k| (k == "OUTPUT_TOPIC").then(|| "src".to_owned())).unwrap();
    let options = ProcessOptions {
        output_topic: "flowctl.bin.ttp".into(),
        schema_id: None,
        fail_fraction: 0.0,
    };
    // Events made the way the processor makes them, without running it.
    for seq in 300..=320 {
        let out = ledger_record(&generator, &source, seq).unwrap();
        let input = Record {
            topic: out.topic,
            partition: 0,
            offset: 0,
            key: out.key,
            payload: Some(out.payload),
            headers: out.headers,
            timestamp_ms: None,
        };
        let Outcome::Events { records, .. } = process(&input, &options) else {
            panic!("ledger {seq} failed");
        };
        for r in records {
            producer.send(&r).await.unwrap();
        }
    }
    let expected = Totals::of_events(&generator.expected_events(300..=320).unwrap());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("totals.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_consumer_app"))
        .env_remove("ENABLE_FLOWCTL")
        .env("KAFKA_BROKERS", brokers)
        .env("INPUT_TOPICS", "flowctl.bin.ttp")
        .env("TOTALS_FILE", &file)
        .env("HEALTH_PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            if json["events_total"] == expected.events_total {
                assert_eq!(
                    json,
                    serde_json::from_str::<serde_json::Value>(&expected.to_json()).unwrap()
                );
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "totals never reached"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
}
