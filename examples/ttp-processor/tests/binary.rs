//! The `ttp-processor` binary, standalone (no control plane), against the embedded broker:
//! ledgers become their events, a garbage record becomes a dead letter, SIGTERM stops it
//! cleanly, and after a restart it does not process committed input again.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::process::Stdio;
use std::time::Duration;

use flowctl_agent::CancellationToken;
use flowctl_bus::{Consumer, ConsumerOptions, DlqRecord, EmbeddedBroker, OutRecord, Producer};
use stellar_live_source_datalake::{ledger_record, Generator, SourceConfig};
use tokio::process::{Child, Command};

const DEADLINE: Duration = Duration::from_secs(30);
const TESTNET: &str = "Test SDF Network ; September 2015";

fn spawn(brokers: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ttp-processor"))
        .env_remove("ENABLE_FLOWCTL")
        .env("KAFKA_BROKERS", brokers)
        .env("INPUT_TOPICS", "flowctl.bin.src")
        .env("OUTPUT_TOPIC", "flowctl.bin.ttp")
        .env("FLOWCTL_PIPELINE", "bin")
        .env("FLOWCTL_COMPONENT_ID", "ttp")
        .env("HEALTH_PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn terminate(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
}

async fn produce_ledgers(producer: &Producer, range: std::ops::RangeInclusive<u32>) -> usize {
    let generator = Generator::new(TESTNET).unwrap();
    let config =
        SourceConfig::from_vars(|k| (k == "OUTPUT_TOPIC").then(|| "flowctl.bin.src".to_owned()))
            .unwrap();
    let mut events = 0;
    for seq in range {
        events += generator.ledger(seq).unwrap().events.len();
        producer
            .send(&ledger_record(&generator, &config, seq).unwrap())
            .await
            .unwrap();
    }
    events
}

async fn count(c: &Consumer, n: usize) -> Vec<flowctl_bus::Record> {
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while out.len() < n {
            out.push(c.recv().await.unwrap());
        }
    })
    .await
    .unwrap();
    out
}

#[tokio::test]
async fn processes_ledgers_dead_letters_garbage_and_resumes_from_commits() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let producer = Producer::new(brokers).unwrap();
    let cancel = CancellationToken::new();
    let mut expected = produce_ledgers(&producer, 100..=104).await;
    producer
        .send(&OutRecord::new("flowctl.bin.src", "not a ledger").with_ledger_key(105))
        .await
        .unwrap();

    let first = spawn(brokers);
    let out = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec!["flowctl.bin.ttp".into()]),
        &cancel,
    )
    .await
    .unwrap();
    let dlq = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec!["flowctl.bin.dlq".into()]),
        &cancel,
    )
    .await
    .unwrap();
    count(&out, expected).await;
    let dead = count(&dlq, 1).await.remove(0);
    let meta = DlqRecord::from_headers(&dead.headers).unwrap();
    assert_eq!(meta.component, "ttp");
    assert_eq!(meta.error, "missing header flowctl-event-type");
    assert_eq!(dead.ledger_key().unwrap(), 105);
    terminate(first).await;

    // After a restart only the new ledger is processed: the rest was committed at shutdown.
    let second = spawn(brokers);
    let more = produce_ledgers(&producer, 106..=106).await;
    let records = count(&out, more).await;
    assert!(records.iter().all(|r| r.ledger_key().unwrap() == 106));
    expected += more;
    let (mut low, mut high) = (0, 0);
    for p in 0..out.partitions().len() as i32 {
        let (l, h) = out.watermarks("flowctl.bin.ttp", p).await.unwrap();
        low += l;
        high += h;
    }
    assert_eq!((high - low) as usize, expected, "the restart repeated work");
    terminate(second).await;
}
