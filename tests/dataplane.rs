//! The Kafka data plane end to end on a 3-node cluster and the embedded broker: the example
//! source, processor and consumer run as supervised processes; the processor fails 5% of the
//! ledgers on purpose; the leader indexes the dead letters while it is killed; the failed
//! ledgers are replayed once the injection is off, and the consumer's totals become complete.
//!
//! Needs the example binaries (`cargo build --workspace --bins`, which scripts/test.sh runs).

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use consumer_app::Totals;
use flowctl_bus::EmbeddedBroker;
use flowctl_testkit::{flowctl_bin, wait_until, Cluster, ClusterOptions};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

const TESTNET: &str = "Test SDF Network ; September 2015";
const FIRST: u32 = 60_000;
const LAST: u32 = 61_199;
const FAIL_FRACTION: f64 = 0.05;

fn bin(name: &str) -> PathBuf {
    let p = flowctl_bin().unwrap().parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the examples first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

fn doc(totals: &std::path::Path, fail_fraction: f64) -> String {
    format!(
        r#"apiVersion: flowctl/v1
kind: Pipeline
metadata:
  name: e2e
spec:
  bus:
    partitions: 3
  sources:
    - id: source
      command: ["{src}"]
      env:
        START_LEDGER: "{FIRST}"
        END_LEDGER: "{LAST}"
        NETWORK_PASSPHRASE: "{TESTNET}"
      output_event_types: [raw_ledger_service.RawLedgerChunk]
  processors:
    - id: ttp
      command: ["{ttp}"]
      inputs: [source]
      env:
        TTP_FAIL_FRACTION: "{fail_fraction}"
      input_event_types: [raw_ledger_service.RawLedgerChunk]
      output_event_types: [token_transfer.TokenTransferEvent]
  sinks:
    - id: consumer
      command: ["{consumer}"]
      inputs: [ttp]
      env:
        TOTALS_FILE: "{totals}"
      input_event_types: [token_transfer.TokenTransferEvent]
"#,
        src = bin("stellar-live-source-datalake").display(),
        ttp = bin("ttp-processor").display(),
        consumer = bin("consumer_app").display(),
        totals = totals.display(),
    )
}

/// events_total, events_by_kind and amounts: what must match (ledger counting depends on the
/// order replayed records arrive in).
fn essentials(v: &Value) -> (u64, Value, Value) {
    (
        v["events_total"].as_u64().unwrap_or(0),
        v["events_by_kind"].clone(),
        v["amounts"].clone(),
    )
}

/// Equal totals (exact), or at least as many events of every kind (a real broker).
fn reached(actual: &Value, expected: &Value, exact: bool) -> bool {
    if exact {
        return essentials(actual) == essentials(expected);
    }
    let kinds = expected["events_by_kind"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    actual["events_total"].as_u64() >= expected["events_total"].as_u64()
        && kinds
            .iter()
            .all(|(k, n)| actual["events_by_kind"][k].as_u64() >= n.as_u64())
}

fn expected_totals(exclude: &BTreeSet<u32>) -> Value {
    let events: Vec<_> = stellar_live_source_datalake::Generator::new(TESTNET)
        .unwrap()
        .expected_events(FIRST..=LAST)
        .unwrap()
        .into_iter()
        .filter(|e| !exclude.contains(&e.ledger_sequence))
        .collect();
    serde_json::from_str(&Totals::of_events(&events).summary().to_json()).unwrap()
}

fn read_totals(path: &std::path::Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// DLQ entries of the pipeline: id → (key, state).
fn dlq_entries(c: &Cluster, node: usize) -> BTreeMap<String, (String, String)> {
    c.json(node, &["dlq", "ls", "--pipeline", "e2e", "--timeout", "5"])
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["id"].as_str().unwrap().to_owned(),
                        (
                            e["key"].as_str().unwrap().to_owned(),
                            e["state"].as_str().unwrap().to_owned(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every record of `topic`: (partition, offset, ledger key).
fn topic_records(brokers: &str, topic: &str) -> Vec<(i32, i64, u32)> {
    use flowctl_bus::{Consumer, ConsumerOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cancel = flowctl_agent::CancellationToken::new();
        let c = tokio::time::timeout(
            Duration::from_secs(20),
            Consumer::assign(
                ConsumerOptions::from_beginning(brokers, vec![topic.to_owned()]),
                &cancel,
            ),
        )
        .await
        .unwrap()
        .unwrap();
        // Read until the topic stays quiet: watermarks are not used, since not every
        // Kafka-protocol broker reports them per record.
        let mut out = Vec::new();
        while let Ok(r) = tokio::time::timeout(Duration::from_secs(3), c.recv()).await {
            let r = r.unwrap();
            out.push((r.partition, r.offset, r.ledger_key().unwrap() as u32));
        }
        out
    })
}

#[test]
fn failed_records_are_indexed_once_across_a_leader_kill_and_replays_complete_the_totals() {
    // A real broker when FLOWCTL_TEST_KAFKA_BROKERS names one (scripts/real-broker-test.sh),
    // else librdkafka's mock cluster in this process.
    let (embedded, brokers) = match std::env::var("FLOWCTL_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => (None, b),
        _ => {
            let e = EmbeddedBroker::start(1).unwrap();
            let b = e.bootstrap_servers().to_owned();
            (Some(e), b)
        }
    };
    // librdkafka's mock broker is exact: idempotent produces, one offset per record. A real
    // broker without idempotent producers may hold a record twice (a retried produce), so there
    // every failed ledger must be indexed and the totals must reach at least the expected ones.
    let exact = embedded.is_some();
    let mut c = Cluster::start(
        3,
        ClusterOptions {
            extra_args: vec![
                "--kafka-brokers".into(),
                brokers.clone(),
                "--node-grace".into(),
                "3".into(),
                "--heartbeat-ttl".into(),
                "3".into(),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    c.push_example_schemas(0).unwrap();
    let failed: BTreeSet<u32> = (FIRST..=LAST)
        .filter(|s| ttp_processor::fails_injected(*s, FAIL_FRACTION))
        .collect();
    assert!(failed.len() > 20, "only {} ledgers fail", failed.len());
    let totals = c.dir().join("totals.json");
    let file = c.dir().join("e2e.yaml");
    std::fs::write(&file, doc(&totals, FAIL_FRACTION)).unwrap();
    let out = c
        .flowctl(1, &["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Wait until the source has emitted its range (so that killing its node cannot make it
    // emit ledgers twice), make the node that runs it the leader, and SIGKILL that leader
    // while the dead letters are being indexed.
    wait_until(Duration::from_secs(90), || {
        let keys: BTreeSet<u32> = topic_records(&brokers, "flowctl.e2e.source")
            .into_iter()
            .map(|r| r.2)
            .collect();
        keys.len() == (LAST - FIRST + 1) as usize
    })
    .unwrap_or_else(|e| {
        panic!(
            "the source did not emit its range: {e}\n{}",
            c.log_tail(0, 40)
        )
    });
    let described = c.json(0, &["describe", "pipeline", "e2e"]).unwrap();
    let source_node = described["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "source/0")
        .unwrap()["node_id"]
        .as_u64()
        .unwrap();
    let out = c
        .flowctl(0, &["cluster", "transfer-leader", &source_node.to_string()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leader = c.leader_index().unwrap();
    let indexed_before = dlq_entries(&c, leader).len();
    c.kill(leader);
    eprintln!(
        "killed the leader with {indexed_before} of {} dead letters indexed",
        failed.len()
    );
    let other = (leader + 1) % 3;
    // Every failed input record is indexed exactly once (on a real broker, where the test's
    // own read of the topic need not match the processor's: every failed ledger is indexed).
    let failed_inputs: BTreeSet<String> = topic_records(&brokers, "flowctl.e2e.source")
        .into_iter()
        .filter(|(_, _, key)| failed.contains(key))
        .map(|(p, o, _)| flowctl_state::dlq::entry_id("flowctl.e2e.source", p, o))
        .collect();
    let indexed_keys = |c: &Cluster| -> BTreeSet<u32> {
        dlq_entries(c, other)
            .values()
            .map(|(k, _)| k.parse().unwrap())
            .collect()
    };
    wait_until(Duration::from_secs(120), || {
        if exact {
            dlq_entries(&c, other).len() >= failed_inputs.len()
        } else {
            indexed_keys(&c) == failed
        }
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} of {} indexed",
            dlq_entries(&c, other).len(),
            failed_inputs.len()
        )
    });
    c.restart(leader).unwrap();
    c.wait_ready(leader, Duration::from_secs(30)).unwrap();
    // Reads are linearizable; the pause is the window in which a doubled entry would appear.
    std::thread::sleep(Duration::from_secs(2));
    let entries = dlq_entries(&c, leader);
    let ids: BTreeSet<String> = entries.keys().cloned().collect();
    if exact {
        assert_eq!(ids, failed_inputs);
    }
    let keys: BTreeSet<u32> = entries.values().map(|(k, _)| k.parse().unwrap()).collect();
    assert_eq!(keys, failed);
    assert!(entries.values().all(|(_, s)| s == "pending"));
    for i in 0..3 {
        assert_eq!(dlq_entries(&c, i), entries, "node {i}");
    }

    // The consumer's totals are the expected events minus the failed ledgers.
    let partial = expected_totals(&failed);
    wait_until(Duration::from_secs(60), || {
        reached(&read_totals(&totals), &partial, exact)
    })
    .unwrap_or_else(|e| panic!("{e}: totals {} want {}", read_totals(&totals), partial));

    // `dlq show` decodes the dead letter through the schema registry.
    let (id, (key, _)) = entries.iter().next().unwrap();
    let shown = c.json(other, &["dlq", "show", id]).unwrap();
    assert_eq!(shown["component"], "ttp", "{shown}");
    assert_eq!(
        shown["event_type"], "raw_ledger_service.RawLedgerChunk",
        "{shown}"
    );
    assert_eq!(
        shown["payload"]["startLedger"]
            .as_u64()
            .unwrap()
            .to_string(),
        *key,
        "{shown}"
    );
    assert_eq!(shown["source"]["topic"], "flowctl.e2e.source");

    // Turn the injection off (a rolling change of the processor), then replay everything.
    std::fs::write(&file, doc(&totals, 0.0)).unwrap();
    let out = c
        .flowctl(0, &["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("restart ttp"));
    wait_until(Duration::from_secs(30), || {
        c.json(0, &["describe", "pipeline", "e2e"]).is_ok_and(|v| {
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["instance"] == "ttp/0" && e["reason"] == "Replaced")
        })
    })
    .unwrap();
    let out = c
        .flowctl(
            2,
            &["dlq", "replay", "--pipeline", "e2e", "--all", "-o", "json"],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.as_array().unwrap().len(), entries.len());
    assert!(
        results
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == "replayed"),
        "{results}"
    );
    let full = expected_totals(&BTreeSet::new());
    wait_until(Duration::from_secs(60), || {
        reached(&read_totals(&totals), &full, exact)
    })
    .unwrap_or_else(|e| panic!("{e}: totals {} want {}", read_totals(&totals), full));
    // A retried replay publishes nothing again.
    let out = c.json(1, &["dlq", "replay", "--id", id]).unwrap();
    assert_eq!(out[0]["result"], "skipped", "{out}");
    let after = dlq_entries(&c, 1);
    assert!(after.values().all(|(_, s)| s == "replayed"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(reached(&read_totals(&totals), &full, exact));
    if exact {
        assert_eq!(essentials(&read_totals(&totals)), essentials(&full));
    }

    let out = c.flowctl(0, &["delete", "pipeline", "e2e"]).unwrap();
    assert!(out.status.success());
}
