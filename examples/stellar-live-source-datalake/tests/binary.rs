//! The `stellar-live-source-datalake` binary, standalone (no control plane), against the
//! embedded broker: it produces its range, stays up until SIGTERM, exits cleanly, and a second
//! run continues after the newest ledger in the topic.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::process::Stdio;
use std::time::Duration;

use flowctl_agent::CancellationToken;
use flowctl_bus::{Consumer, ConsumerOptions, EmbeddedBroker, Envelope};
use tokio::process::{Child, Command};

const DEADLINE: Duration = Duration::from_secs(30);

fn spawn(brokers: &str, topic: &str, end: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stellar-live-source-datalake"))
        .env_remove("ENABLE_FLOWCTL")
        .env("KAFKA_BROKERS", brokers)
        .env("OUTPUT_TOPIC", topic)
        .env("START_LEDGER", "10")
        .env("END_LEDGER", end.to_string())
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

#[tokio::test]
async fn produces_its_range_then_resumes_after_a_restart() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let topic = "flowctl.bin.source";

    let first = spawn(brokers, topic, 14);
    let c = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec![topic.into()]),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut keys = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while keys.len() < 5 {
            let r = c.recv().await.unwrap();
            assert_eq!(
                r.envelope().unwrap(),
                Envelope::new("raw_ledger_service.RawLedgerChunk")
            );
            keys.push(r.ledger_key().unwrap());
        }
    })
    .await
    .unwrap();
    keys.sort_unstable();
    assert_eq!(keys, [10, 11, 12, 13, 14]);
    terminate(first).await;

    let second = spawn(brokers, topic, 16);
    tokio::time::timeout(DEADLINE, async {
        while keys.len() < 7 {
            keys.push(c.recv().await.unwrap().ledger_key().unwrap());
        }
    })
    .await
    .unwrap();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [10, 11, 12, 13, 14, 15, 16],
        "the second run repeated ledgers"
    );
    terminate(second).await;
}
