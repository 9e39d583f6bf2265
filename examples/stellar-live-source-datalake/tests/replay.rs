//! Range replay against librdkafka's mock cluster and an in-test control plane (a tonic
//! `ReplayService` on 127.0.0.1, port 0, implementing only `WatchChunks` and `ReportChunk`):
//! the test sends chunk commands down the stream, then checks the reports and every record
//! in the topic.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowctl_agent::{Agent, AgentConfig, AgentHandle, CancellationToken, ComponentDescription};
use flowctl_bus::{Consumer, ConsumerOptions, EmbeddedBroker, Envelope, Record};
use flowctl_proto::admin::v1 as proto;
use flowctl_proto::admin::v1::replay_service_server::{ReplayService, ReplayServiceServer};
use prost::Message as _;
use stellar_live_source_datalake::{
    run_replays, RawLedgerChunk, SourceConfig, HEADER_REPLAY_CHUNK, HEADER_REPLAY_JOB,
    RAW_LEDGER_CHUNK_EVENT_TYPE,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The fake control plane

type CommandTx = mpsc::Sender<Result<proto::ChunkCommand, Status>>;

#[derive(Default)]
struct State {
    streams: Vec<Option<CommandTx>>,
    reports: Vec<proto::ChunkReport>,
    /// Answer accepted=false to reports of these chunk indexes.
    stale_chunks: Vec<u32>,
}

#[derive(Clone, Default)]
struct FakeReplay(Arc<Mutex<State>>);

impl FakeReplay {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    async fn wait_stream(&self, n: usize) -> CommandTx {
        eventually(&format!("stream {n} to open"), || {
            self.state().streams.len() > n
        })
        .await;
        self.state().streams[n].take().unwrap()
    }

    fn reports(&self) -> Vec<proto::ChunkReport> {
        self.state().reports.clone()
    }

    /// The reports of chunk `index`, as (attempt, state, records, retryable, error).
    fn reports_of(&self, index: u32) -> Vec<(u32, Phase, u64, bool, String)> {
        self.reports()
            .into_iter()
            .filter(|r| r.chunk == index)
            .map(|r| {
                (
                    r.attempt,
                    Phase::from(r.state),
                    r.records,
                    r.retryable,
                    r.error,
                )
            })
            .collect()
    }

    async fn wait_terminal(&self, index: u32, attempt: u32) {
        eventually(
            &format!("a final report of chunk {index} attempt {attempt}"),
            || {
                self.reports().iter().any(|r| {
                    r.chunk == index
                        && r.attempt == attempt
                        && (r.state == proto::ChunkReportState::Done as i32
                            || r.state == proto::ChunkReportState::Failed as i32)
                })
            },
        )
        .await;
    }
}

/// A report's state, short for assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Done,
    Failed,
    Other,
}

impl From<i32> for Phase {
    fn from(v: i32) -> Self {
        match proto::ChunkReportState::try_from(v) {
            Ok(proto::ChunkReportState::Running) => Phase::Running,
            Ok(proto::ChunkReportState::Done) => Phase::Done,
            Ok(proto::ChunkReportState::Failed) => Phase::Failed,
            _ => Phase::Other,
        }
    }
}

#[tonic::async_trait]
impl ReplayService for FakeReplay {
    type WatchChunksStream = ReceiverStream<Result<proto::ChunkCommand, Status>>;

    async fn watch_chunks(
        &self,
        _: Request<proto::WatchChunksRequest>,
    ) -> Result<Response<Self::WatchChunksStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        self.state().streams.push(Some(tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_chunk(
        &self,
        request: Request<proto::ChunkReport>,
    ) -> Result<Response<proto::ChunkReportAck>, Status> {
        let report = request.into_inner();
        let mut s = self.state();
        let accepted = !s.stale_chunks.contains(&report.chunk);
        s.reports.push(report);
        Ok(Response::new(proto::ChunkReportAck { accepted }))
    }

    async fn create(
        &self,
        _: Request<proto::CreateReplayRequest>,
    ) -> Result<Response<proto::ReplayJob>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list(
        &self,
        _: Request<proto::ListReplaysRequest>,
    ) -> Result<Response<proto::ListReplaysResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn get(
        &self,
        _: Request<proto::GetReplayRequest>,
    ) -> Result<Response<proto::ReplayJob>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn chunks(
        &self,
        _: Request<proto::ReplayChunksRequest>,
    ) -> Result<Response<proto::ReplayChunksResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn control(
        &self,
        _: Request<proto::ReplayControlRequest>,
    ) -> Result<Response<proto::ReplayJob>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// A gRPC server; it stops when dropped.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(fake: FakeReplay) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let router = tonic::transport::Server::builder().add_service(ReplayServiceServer::new(fake));
    tokio::spawn(
        router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener),
            stop.clone().cancelled_owned(),
        ),
    );
    Server { addr, stop }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn run(job: &str, chunk: u32, attempt: u32, from: u64, to: u64) -> proto::ChunkCommand {
    proto::ChunkCommand {
        job_id: job.into(),
        chunk,
        from_ledger: from,
        to_ledger: to,
        attempt,
        cancel: false,
    }
}

fn source_config(brokers: &str, topic: &str, extra: &[(&str, &str)]) -> SourceConfig {
    let mut vars: HashMap<String, String> = [
        ("KAFKA_BROKERS", brokers),
        ("OUTPUT_TOPIC", topic),
        ("LIVE", "false"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    vars.retain(|_, v| !v.is_empty());
    SourceConfig::from_vars(|k| vars.get(k).cloned()).unwrap()
}

async fn start_agent(server: SocketAddr, component_id: &str) -> AgentHandle {
    let config = AgentConfig {
        enabled: true,
        endpoints: vec![server.to_string()],
        request_timeout: Duration::from_secs(2),
        component_id: flowctl_agent::ComponentId::new(component_id),
        ..AgentConfig::default()
    };
    Agent::start(
        config,
        ComponentDescription::source("stellar-live-source-datalake"),
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

/// Every record in `topic`: the watermarks say how many there are, then all are read.
async fn all_records(brokers: &str, topic: &str) -> Vec<Record> {
    let c = Consumer::assign(
        ConsumerOptions::from_beginning(brokers, vec![topic.into()]),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut total = 0;
    for (t, p) in c.partitions().to_vec() {
        let (low, high) = c.watermarks(&t, p).await.unwrap();
        total += high - low;
    }
    let mut out = Vec::new();
    within("reading the topic", async {
        while i64::try_from(out.len()).unwrap() < total {
            out.push(c.recv().await.unwrap());
        }
    })
    .await;
    out
}

/// A replay record, checked for the live path's conventions: (ledger, job header, chunk
/// header, payload job id).
fn decode(r: &Record) -> (u64, String, u32, String) {
    assert_eq!(
        r.envelope().unwrap(),
        Envelope::new(RAW_LEDGER_CHUNK_EVENT_TYPE)
    );
    let ledger = r.ledger_key().unwrap();
    let chunk = RawLedgerChunk::decode(r.payload.as_deref().unwrap()).unwrap();
    assert_eq!(u64::from(chunk.start_ledger), ledger);
    assert_eq!(u64::from(chunk.end_ledger), ledger);
    assert!(!chunk.ledger_close_meta_xdr.is_empty());
    let job = r.headers.require_str(HEADER_REPLAY_JOB).unwrap().to_owned();
    let index = r
        .headers
        .require_str(HEADER_REPLAY_CHUNK)
        .unwrap()
        .parse()
        .unwrap();
    (ledger, job, index, chunk.job_id)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn chunks_write_exactly_their_ledgers_with_the_job_id_and_report_counts_and_failures() {
    init_tracing();
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let topic = "flowctl.replay.source";
    let fake = FakeReplay::default();
    let server = serve(fake.clone()).await;
    let agent = start_agent(server.addr, "stellar-src-0").await;
    let config = source_config(
        &brokers,
        topic,
        &[("REPLAY_FAIL_RETRYABLE", "2:1"), ("REPLAY_FAIL_FATAL", "3")],
    );
    let cancel = CancellationToken::new();
    let commands = agent.chunk_commands().unwrap();
    let replays = tokio::spawn({
        let (agent, cancel) = (agent.clone(), cancel.clone());
        async move { run_replays(&config, &agent, commands, &cancel).await }
    });

    let stream = fake.wait_stream(0).await;
    stream.send(Ok(run("job-r", 0, 1, 10, 14))).await.unwrap();
    stream.send(Ok(run("job-r", 1, 1, 20, 22))).await.unwrap();
    stream.send(Ok(run("job-r", 2, 1, 30, 31))).await.unwrap();
    stream.send(Ok(run("job-r", 3, 1, 40, 41))).await.unwrap();
    stream.send(Ok(run("job-r", 4, 1, 50, 49))).await.unwrap();
    stream
        .send(Ok(run("job-r", 5, 1, 60, u64::from(u32::MAX) + 1)))
        .await
        .unwrap();
    for index in 0..=5 {
        fake.wait_terminal(index, 1).await;
    }
    // The retryable failure is tried again, as the control plane would.
    stream.send(Ok(run("job-r", 2, 2, 30, 31))).await.unwrap();
    fake.wait_terminal(2, 2).await;

    let summary = |index| {
        fake.reports_of(index)
            .into_iter()
            .map(|(attempt, state, records, retryable, error)| {
                (attempt, state, records, retryable, error.is_empty())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        summary(0),
        [
            (1, Phase::Running, 0, false, true),
            (1, Phase::Done, 5, false, true)
        ]
    );
    assert_eq!(
        summary(1),
        [
            (1, Phase::Running, 0, false, true),
            (1, Phase::Done, 3, false, true)
        ]
    );
    assert_eq!(
        summary(2),
        [
            (1, Phase::Running, 0, false, true),
            (1, Phase::Failed, 0, true, false),
            (2, Phase::Running, 0, false, true),
            (2, Phase::Done, 2, false, true)
        ]
    );
    assert_eq!(
        summary(3),
        [
            (1, Phase::Running, 0, false, true),
            (1, Phase::Failed, 0, false, false)
        ]
    );
    for index in [4, 5] {
        let reports = fake.reports_of(index);
        assert_eq!(reports.len(), 2, "{reports:?}");
        let (_, state, _, retryable, error) = &reports[1];
        assert_eq!((*state, *retryable), (Phase::Failed, false));
        assert!(error.contains("bad range"), "{error}");
    }
    assert!(fake
        .reports()
        .iter()
        .all(|r| r.component_id == "stellar-src-0" && r.job_id == "job-r"));

    // The topic holds exactly the ledgers of the done chunks, each once, tagged.
    let mut found: BTreeMap<u64, u32> = BTreeMap::new();
    for r in all_records(&brokers, topic).await {
        let (ledger, job, index, payload_job) = decode(&r);
        assert_eq!((job.as_str(), payload_job.as_str()), ("job-r", "job-r"));
        assert!(
            found.insert(ledger, index).is_none(),
            "ledger {ledger} twice"
        );
    }
    let expected: BTreeMap<u64, u32> = (10..=14)
        .map(|l| (l, 0))
        .chain((20..=22).map(|l| (l, 1)))
        .chain((30..=31).map(|l| (l, 2)))
        .collect();
    assert_eq!(found, expected);
    assert_eq!(
        agent
            .counter("flowctl_source_replay_chunks_done_total")
            .get(),
        3
    );
    assert_eq!(
        agent
            .counter("flowctl_source_replay_chunks_failed_total")
            .get(),
        4
    );

    cancel.cancel();
    within("the replay loop to stop", replays)
        .await
        .unwrap()
        .unwrap();
    within("agent shutdown", agent.shutdown()).await;
}

#[tokio::test]
async fn a_cancel_or_a_refused_report_stops_the_chunk_and_one_worker_runs_them_in_turn() {
    init_tracing();
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let topic = "flowctl.replay.cancel";
    let fake = FakeReplay::default();
    fake.state().stale_chunks = vec![1];
    let server = serve(fake.clone()).await;
    let agent = start_agent(server.addr, "stellar-src-1").await;
    let config = source_config(&brokers, topic, &[("REPLAY_CONCURRENCY", "1")]);
    let cancel = CancellationToken::new();
    let commands = agent.chunk_commands().unwrap();
    let replays = tokio::spawn({
        let (agent, cancel) = (agent.clone(), cancel.clone());
        async move { run_replays(&config, &agent, commands, &cancel).await }
    });
    let produced = agent.counter("flowctl_source_replay_ledgers_total");

    let stream = fake.wait_stream(0).await;
    // Far more ledgers than the test will wait for.
    stream
        .send(Ok(run("job-c", 0, 1, 1_000, 10_000_000)))
        .await
        .unwrap();
    stream.send(Ok(run("job-c", 1, 1, 100, 109))).await.unwrap();
    stream.send(Ok(run("job-c", 2, 1, 200, 209))).await.unwrap();
    eventually("chunk 0 to be producing", || produced.get() > 100).await;
    stream
        .send(Ok(proto::ChunkCommand {
            cancel: true,
            ..run("job-c", 0, 1, 1_000, 10_000_000)
        }))
        .await
        .unwrap();
    fake.wait_terminal(2, 1).await;

    // One worker: each chunk started only after the one before it ended. Chunk 0 stopped
    // without a report; chunk 1's RUNNING report was refused, so it wrote nothing.
    let order: Vec<(u32, Phase)> = fake
        .reports()
        .iter()
        .map(|r| (r.chunk, Phase::from(r.state)))
        .collect();
    assert_eq!(
        order,
        [
            (0, Phase::Running),
            (1, Phase::Running),
            (2, Phase::Running),
            (2, Phase::Done)
        ]
    );
    assert_eq!(fake.reports_of(2)[1].2, 10);
    assert_eq!(
        agent
            .counter("flowctl_source_replay_chunks_stopped_total")
            .get(),
        2
    );

    let mut per_chunk: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for r in all_records(&brokers, topic).await {
        let (ledger, job, index, _) = decode(&r);
        assert_eq!(job, "job-c");
        per_chunk.entry(index).or_default().push(ledger);
    }
    assert_eq!(per_chunk.get(&1), None, "a refused chunk wrote records");
    let mut two = per_chunk.remove(&2).unwrap();
    two.sort_unstable();
    assert_eq!(two, (200..=209).collect::<Vec<_>>());
    let zero = per_chunk.remove(&0).unwrap();
    assert!(
        zero.len() < 9_999_001,
        "the cancelled chunk kept going: {}",
        zero.len()
    );

    cancel.cancel();
    within("the replay loop to stop", replays)
        .await
        .unwrap()
        .unwrap();
    within("agent shutdown", agent.shutdown()).await;
}

#[tokio::test]
async fn the_binary_with_live_off_serves_chunks_only() {
    init_tracing();
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let topic = "flowctl.replay.bin";
    let fake = FakeReplay::default();
    let server = serve(fake.clone()).await;
    let mut child =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_stellar-live-source-datalake"))
            .env("ENABLE_FLOWCTL", "true")
            .env("FLOWCTL_ENDPOINT", server.addr.to_string())
            .env("FLOWCTL_COMPONENT_ID", "stellar-bin-0")
            .env("KAFKA_BROKERS", &brokers)
            .env("OUTPUT_TOPIC", topic)
            .env("LIVE", "false")
            .env("START_LEDGER", "1000")
            .env("HEALTH_PORT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();

    let stream = fake.wait_stream(0).await;
    stream.send(Ok(run("job-b", 7, 1, 300, 303))).await.unwrap();
    fake.wait_terminal(7, 1).await;
    let reports = fake.reports_of(7);
    assert_eq!(reports.last().unwrap().1, Phase::Done);
    assert_eq!(reports.last().unwrap().2, 4);
    assert!(fake
        .reports()
        .iter()
        .all(|r| r.component_id == "stellar-bin-0"));

    // Only the chunk's ledgers: no live stream from START_LEDGER.
    let mut ledgers: Vec<u64> = all_records(&brokers, topic)
        .await
        .iter()
        .map(|r| decode(r).0)
        .collect();
    ledgers.sort_unstable();
    assert_eq!(ledgers, [300, 301, 302, 303]);

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = within("the binary to exit", child.wait()).await.unwrap();
    assert!(exit.success(), "exit status {exit}");
    // It closed its command stream on the way out.
    within("the stream to close", stream.closed()).await;
}
