//! The data plane against librdkafka's mock cluster, over real TCP.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::time::Duration;

use flowctl_bus::{
    ensure_topics, Consumer, ConsumerOptions, DlqRecord, EmbeddedBroker, Envelope, OutRecord,
    Producer, Record, TopicSpec,
};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

async fn recv_n(c: &Consumer, n: usize) -> Vec<Record> {
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
async fn ensure_topics_creates_missing_topics_and_accepts_existing_ones() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let specs = [
        TopicSpec::new("flowctl.p.src").with_partitions(2),
        TopicSpec::new("flowctl.p.dlq"),
    ];
    ensure_topics(&brokers, &specs, DEADLINE).await.unwrap();
    // Again: every topic exists now, which is success.
    ensure_topics(&brokers, &specs, DEADLINE).await.unwrap();
    let err = ensure_topics(&brokers, &[TopicSpec::new("bad topic")], DEADLINE)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "topic bad topic: a topic name uses only [a-zA-Z0-9._-]"
    );
}

#[tokio::test]
async fn embedded_broker_creates_topics_with_their_partition_counts() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let specs = [TopicSpec::new("flowctl.p.wide").with_partitions(3)];
    broker.create_topics(&specs).unwrap();
    broker.create_topics(&specs).unwrap();
    let c = Consumer::assign(
        ConsumerOptions::from_beginning(broker.bootstrap_servers(), vec!["flowctl.p.wide".into()]),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(c.partitions().len(), 3);
}

#[tokio::test]
async fn records_round_trip_with_their_envelope_and_key() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let topic = "flowctl.p.src";
    ensure_topics(
        brokers,
        &[TopicSpec::new(topic).with_partitions(2)],
        DEADLINE,
    )
    .await
    .unwrap();
    let producer = Producer::new(brokers).unwrap();
    let envelope = Envelope::new("raw_ledger_service.RawLedgerChunk").with_schema_id("3");
    for seq in 100..110u64 {
        let rec = OutRecord::new(topic, format!("ledger {seq}"))
            .with_ledger_key(seq)
            .with_envelope(&envelope);
        producer.send(&rec).await.unwrap();
    }
    let c = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec![topic.into()]),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut got = recv_n(&c, 10).await;
    got.sort_by_key(|r| r.ledger_key().unwrap());
    for (r, seq) in got.iter().zip(100..110u64) {
        assert_eq!(r.ledger_key().unwrap(), seq);
        assert_eq!(r.envelope().unwrap(), envelope);
        assert_eq!(
            r.payload.as_deref(),
            Some(format!("ledger {seq}").as_bytes())
        );
    }
}

#[tokio::test]
async fn dlq_records_keep_key_payload_and_headers_on_the_wire() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let producer = Producer::new(brokers).unwrap();
    let envelope = Envelope::new("raw_ledger_service.RawLedgerChunk");
    producer
        .send(
            &OutRecord::new("flowctl.p.src", &b"\x00\x01garbage"[..])
                .with_ledger_key(7)
                .with_envelope(&envelope),
        )
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let input = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec!["flowctl.p.src".into()]),
        &cancel,
    )
    .await
    .unwrap();
    let failed = recv_n(&input, 1).await.remove(0);
    let dlq = DlqRecord::for_record(&failed, "ttp-processor", "bad XDR");
    producer
        .send(&dlq.to_out_record("flowctl.p.dlq", &failed))
        .await
        .unwrap();

    let mut rx = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec!["flowctl.p.dlq".into()]),
        &cancel,
    )
    .await
    .unwrap()
    .into_channel(4, cancel.clone());
    let got = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let back = DlqRecord::from_headers(&got.headers).unwrap();
    assert_eq!(back, dlq);
    assert_eq!(back.envelope, Some(envelope));
    assert_eq!(back.source_topic, "flowctl.p.src");
    assert_eq!(back.source_offset, failed.offset);
    assert_eq!(got.ledger_key().unwrap(), 7);
    assert_eq!(got.payload, failed.payload);
    cancel.cancel();
}

#[tokio::test]
async fn a_record_without_envelope_headers_fails_to_parse_naming_the_header() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let producer = Producer::new(brokers).unwrap();
    producer
        .send(&OutRecord::new("flowctl.p.raw", "x").with_header("flowctl-schema-id", "1"))
        .await
        .unwrap();
    let c = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec!["flowctl.p.raw".into()]),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let r = recv_n(&c, 1).await.remove(0);
    assert_eq!(
        r.envelope().unwrap_err().to_string(),
        "missing header flowctl-event-type"
    );
    assert_eq!(
        DlqRecord::from_headers(&r.headers).unwrap_err().to_string(),
        "missing header flowctl-error"
    );
    assert!(r.ledger_key().is_err());
}

#[tokio::test]
async fn last_records_finds_the_end_of_each_partition() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let topic = "flowctl.p.tail";
    broker
        .create_topics(&[TopicSpec::new(topic).with_partitions(3)])
        .unwrap();
    let producer = Producer::new(brokers).unwrap();
    for seq in 1..=20u64 {
        producer
            .send(&OutRecord::new(topic, "v").with_ledger_key(seq))
            .await
            .unwrap();
    }
    let last = flowctl_bus::last_records(brokers, topic, &CancellationToken::new())
        .await
        .unwrap();
    let max = last.iter().map(|r| r.ledger_key().unwrap()).max();
    assert_eq!(max, Some(20));
}

#[tokio::test]
async fn committed_offsets_resume_a_consumer() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let topic = "flowctl.p.commit";
    broker
        .create_topics(&[TopicSpec::new(topic).with_partitions(1)])
        .unwrap();
    let producer = Producer::new(brokers).unwrap();
    for seq in 1..=5u64 {
        producer
            .send(&OutRecord::new(topic, "v").with_ledger_key(seq))
            .await
            .unwrap();
    }
    let cancel = CancellationToken::new();
    let opts = ConsumerOptions::from_beginning(brokers, vec![topic.into()])
        .with_group("g")
        .with_start(flowctl_bus::StartAt::Committed);
    let c = Consumer::assign(opts.clone(), &cancel).await.unwrap();
    let first = recv_n(&c, 3).await;
    let next = first.last().unwrap().offset + 1;
    c.commit(&[((topic.to_owned(), 0), next)].into_iter().collect())
        .unwrap();
    // An async commit: wait until a new consumer of the group starts after it.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let again = Consumer::assign(opts.clone(), &cancel).await.unwrap();
        let r = recv_n(&again, 1).await.remove(0);
        if r.ledger_key().unwrap() == 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "commit never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn embedded_brokers_listen_on_ephemeral_loopback_ports() {
    let a = EmbeddedBroker::start(2).unwrap();
    let b = EmbeddedBroker::start(1).unwrap();
    let ports = |s: &str| -> Vec<u16> {
        s.split(',')
            .map(|hp| {
                let (host, port) = hp.rsplit_once(':').unwrap();
                assert!(host == "127.0.0.1" || host == "localhost", "{hp}");
                port.parse().unwrap()
            })
            .collect()
    };
    let (pa, pb) = (ports(a.bootstrap_servers()), ports(b.bootstrap_servers()));
    assert_eq!(pa.len(), 2);
    assert!(pa.iter().chain(&pb).all(|p| *p != 0));
    assert!(pb.iter().all(|p| !pa.contains(p)));
    a.shutdown();
}
