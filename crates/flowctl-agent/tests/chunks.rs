//! Chunk commands and reports against an in-test `ReplayService` (a real tonic server on
//! 127.0.0.1, port 0) that implements only `WatchChunks` and `ReportChunk`. The test holds the
//! server side of every stream, so it decides what is sent, and when a stream breaks.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowctl_agent::{
    Agent, AgentConfig, AgentHandle, CancellationToken, ChunkAttempt, ChunkCommand, ChunkCommands,
    ChunkReport, ComponentDescription, ComponentId, Error, ReplayJobId, CHUNK_COMMAND_CAPACITY,
    REPORT_TRIES,
};
use flowctl_proto::admin::v1 as proto;
use flowctl_proto::admin::v1::replay_service_server::{ReplayService, ReplayServiceServer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

const WAIT: Duration = Duration::from_secs(15);

type CommandTx = mpsc::Sender<Result<proto::ChunkCommand, Status>>;

#[derive(Default)]
struct State {
    /// The component id of every `WatchChunks` call.
    watches: Vec<String>,
    /// The server side of every stream opened, in order, until the test takes it (so that
    /// dropping it ends the stream).
    streams: Vec<Option<CommandTx>>,
    reports: Vec<proto::ChunkReport>,
    /// Answer this many reports with this status first.
    report_errors: Vec<Status>,
    /// Answer accepted=false to reports of these chunk indexes.
    stale_chunks: Vec<u32>,
    /// The `authorization` header of every `WatchChunks` and `ReportChunk` call.
    authorization: Vec<Option<String>>,
}

fn authorization<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[derive(Clone, Default)]
struct FakeReplay(Arc<Mutex<State>>);

impl FakeReplay {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Takes the server side of the `n`th stream once it is open.
    async fn wait_stream(&self, n: usize) -> CommandTx {
        eventually(&format!("stream {n} to open"), || {
            self.state().streams.len() > n
        })
        .await;
        self.state().streams[n].take().unwrap()
    }
}

#[tonic::async_trait]
impl ReplayService for FakeReplay {
    type WatchChunksStream = ReceiverStream<Result<proto::ChunkCommand, Status>>;

    async fn watch_chunks(
        &self,
        request: Request<proto::WatchChunksRequest>,
    ) -> Result<Response<Self::WatchChunksStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut s = self.state();
        s.authorization.push(authorization(&request));
        s.watches.push(request.into_inner().component_id);
        s.streams.push(Some(tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_chunk(
        &self,
        request: Request<proto::ChunkReport>,
    ) -> Result<Response<proto::ChunkReportAck>, Status> {
        let header = authorization(&request);
        let report = request.into_inner();
        let mut s = self.state();
        s.authorization.push(header);
        let stale = s.stale_chunks.contains(&report.chunk);
        s.reports.push(report);
        if !s.report_errors.is_empty() {
            return Err(s.report_errors.remove(0));
        }
        Ok(Response::new(proto::ChunkReportAck { accepted: !stale }))
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

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

async fn start(endpoints: &[SocketAddr], component_id: &str) -> AgentHandle {
    let config = AgentConfig {
        enabled: true,
        endpoints: endpoints.iter().map(ToString::to_string).collect(),
        heartbeat_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(2),
        component_id: ComponentId::new(component_id),
        ..AgentConfig::default()
    };
    Agent::start(
        config,
        ComponentDescription::source("src"),
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

fn command(job: &str, chunk: u32, attempt: u32, from: u64, to: u64) -> proto::ChunkCommand {
    proto::ChunkCommand {
        job_id: job.into(),
        chunk,
        from_ledger: from,
        to_ledger: to,
        attempt,
        cancel: false,
    }
}

fn attempt(job: &str, index: u32, attempt: u32) -> ChunkAttempt {
    ChunkAttempt {
        job: ReplayJobId::new(job),
        index,
        attempt,
    }
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

async fn next(commands: &mut ChunkCommands) -> ChunkCommand {
    within("a chunk command", commands.recv()).await.unwrap()
}

#[tokio::test]
async fn commands_arrive_and_reports_reach_the_server_with_the_attempt() {
    init_tracing();
    let fake = FakeReplay::default();
    let server = serve(fake.clone()).await;
    let agent = start(&[server.addr], "src-1").await;
    let mut commands = agent.chunk_commands().unwrap();

    let stream = fake.wait_stream(0).await;
    assert_eq!(fake.state().watches, ["src-1"]);
    stream
        .send(Ok(command("job-a", 0, 1, 10, 19)))
        .await
        .unwrap();
    stream
        .send(Ok(proto::ChunkCommand {
            cancel: true,
            ..command("job-a", 1, 2, 20, 29)
        }))
        .await
        .unwrap();
    assert_eq!(
        next(&mut commands).await,
        ChunkCommand::Run {
            chunk: attempt("job-a", 0, 1),
            from_ledger: 10,
            to_ledger: 19
        }
    );
    assert_eq!(
        next(&mut commands).await,
        ChunkCommand::Cancel {
            chunk: attempt("job-a", 1, 2)
        }
    );

    let c = attempt("job-a", 0, 1);
    assert!(agent.report_chunk(&ChunkReport::running(&c)).await.unwrap());
    assert!(agent
        .report_chunk(&ChunkReport::done(&c, 10))
        .await
        .unwrap());
    let reports = fake.state().reports.clone();
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert_eq!(
            (
                r.component_id.as_str(),
                r.job_id.as_str(),
                r.chunk,
                r.attempt
            ),
            ("src-1", "job-a", 0, 1)
        );
    }
    assert_eq!(reports[0].state, proto::ChunkReportState::Running as i32);
    assert_eq!(reports[1].state, proto::ChunkReportState::Done as i32);
    assert_eq!(reports[1].records, 10);

    assert!(matches!(
        agent.chunk_commands(),
        Err(Error::ChunksAlreadyWatched)
    ));

    within("agent shutdown", agent.shutdown()).await;
    // The watch task ended and dropped its stream, so the server sees it closed.
    within("the stream to close", stream.closed()).await;
    assert_eq!(commands.recv().await, None);
}

#[tokio::test]
async fn a_broken_stream_reconnects_across_endpoints_and_drops_resent_assignments() {
    init_tracing();
    let fake = FakeReplay::default();
    let server = serve(fake.clone()).await;
    let agent = start(&[dead_addr().await, server.addr], "src-2").await;
    let mut commands = agent.chunk_commands().unwrap();

    let first = fake.wait_stream(0).await;
    first.send(Ok(command("job-b", 0, 1, 1, 5))).await.unwrap();
    first.send(Ok(command("job-b", 1, 1, 6, 9))).await.unwrap();
    assert_eq!(next(&mut commands).await.chunk(), &attempt("job-b", 0, 1));
    assert_eq!(next(&mut commands).await.chunk(), &attempt("job-b", 1, 1));
    // Chunk 1 finishes; chunk 0 is still being worked on.
    assert!(agent
        .report_chunk(&ChunkReport::done(&attempt("job-b", 1, 1), 4))
        .await
        .unwrap());

    // The stream breaks with an error.
    first
        .send(Err(Status::unavailable("leader changed")))
        .await
        .unwrap();
    drop(first);
    let second = fake.wait_stream(1).await;
    // The server re-sends what it has not seen finished, and goes on.
    second.send(Ok(command("job-b", 0, 1, 1, 5))).await.unwrap();
    second.send(Ok(command("job-b", 1, 1, 6, 9))).await.unwrap();
    second.send(Ok(command("job-b", 0, 2, 1, 5))).await.unwrap();
    second
        .send(Ok(command("job-b", 2, 1, 10, 12)))
        .await
        .unwrap();
    assert_eq!(next(&mut commands).await.chunk(), &attempt("job-b", 0, 2));
    assert_eq!(next(&mut commands).await.chunk(), &attempt("job-b", 2, 1));

    // The server ends the stream cleanly; the agent opens another.
    drop(second);
    let third = fake.wait_stream(2).await;
    third
        .send(Ok(command("job-b", 3, 1, 13, 14)))
        .await
        .unwrap();
    assert_eq!(next(&mut commands).await.chunk(), &attempt("job-b", 3, 1));
    assert_eq!(fake.state().watches, ["src-2", "src-2", "src-2"]);
    assert!(commands_empty(&mut commands).await);

    within("agent shutdown", agent.shutdown()).await;
}

/// Nothing more is waiting (checked after a round trip that would have delivered it).
async fn commands_empty(commands: &mut ChunkCommands) -> bool {
    tokio::time::timeout(Duration::from_millis(200), commands.recv())
        .await
        .is_err()
}

#[tokio::test]
async fn a_slow_consumer_gets_every_command_in_order() {
    init_tracing();
    let fake = FakeReplay::default();
    let server = serve(fake.clone()).await;
    let agent = start(&[server.addr], "src-3").await;
    let mut commands = agent.chunk_commands().unwrap();
    let stream = fake.wait_stream(0).await;

    let total = u32::try_from(CHUNK_COMMAND_CAPACITY * 3).unwrap();
    let sender = tokio::spawn(async move {
        for i in 0..total {
            let from = u64::from(i) * 10;
            stream
                .send(Ok(command("job-c", i, 1, from, from + 9)))
                .await
                .unwrap();
        }
        stream
    });
    // Three channels' worth are sent before the consumer reads any: the agent's channel fills
    // up and it stops reading the stream, which then buffers in HTTP/2 (these commands are
    // far below a flow-control window). Nothing may be lost.
    let _stream = within("the sender", sender).await.unwrap();
    for i in 0..total {
        assert_eq!(next(&mut commands).await.chunk().index, i);
    }
    assert!(commands_empty(&mut commands).await);
    within("agent shutdown", agent.shutdown()).await;
}

#[tokio::test]
async fn reports_retry_unavailable_and_stop_at_final_errors() {
    init_tracing();
    let fake = FakeReplay::default();
    let server = serve(fake.clone()).await;
    let agent = start(&[server.addr], "src-4").await;
    let c = attempt("job-d", 0, 1);

    fake.state().report_errors = vec![
        Status::unavailable("no leader"),
        Status::deadline_exceeded("slow"),
    ];
    assert!(agent.report_chunk(&ChunkReport::running(&c)).await.unwrap());
    assert_eq!(fake.state().reports.len(), 3);

    fake.state().report_errors = vec![Status::not_found("no such job")];
    let err = agent
        .report_chunk(&ChunkReport::done(&c, 1))
        .await
        .unwrap_err();
    match err {
        Error::ChunkReport {
            chunk,
            tries,
            source,
        } => {
            assert_eq!(
                (chunk, tries, source.code()),
                (c.clone(), 1, Code::NotFound)
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(fake.state().reports.len(), 4);

    fake.state().report_errors = vec![Status::failed_precondition("paused")];
    assert!(agent.report_chunk(&ChunkReport::done(&c, 1)).await.is_err());
    assert_eq!(fake.state().reports.len(), 5);

    fake.state().stale_chunks = vec![0];
    assert!(!agent
        .report_chunk(&ChunkReport::failed(&c, "broker down", true))
        .await
        .unwrap());
    let last = fake.state().reports.last().cloned().unwrap();
    assert_eq!(last.state, proto::ChunkReportState::Failed as i32);
    assert!(last.retryable);
    assert_eq!(last.error, "broker down");

    within("agent shutdown", agent.shutdown()).await;
}

#[tokio::test]
async fn reports_give_up_after_bounded_tries() {
    init_tracing();
    let fake = FakeReplay::default();
    let server = serve(fake.clone()).await;
    let config = AgentConfig {
        enabled: true,
        endpoints: vec![server.addr.to_string()],
        request_timeout: Duration::from_millis(300),
        component_id: ComponentId::new("src-5"),
        ..AgentConfig::default()
    };
    let agent = Agent::start(
        config,
        ComponentDescription::source("src"),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    fake.state().report_errors = vec![Status::unavailable("down"); 10_000];
    let err = within(
        "the report to give up",
        agent.report_chunk(&ChunkReport::done(&attempt("job-e", 0, 1), 1)),
    )
    .await
    .unwrap_err();
    match err {
        Error::ChunkReport { tries, source, .. } => {
            // Each try is bounded by request_timeout: on a loaded machine its last call may
            // be cut by that deadline rather than answered by the fake.
            assert_eq!(tries, REPORT_TRIES);
            assert!(
                matches!(source.code(), Code::Unavailable | Code::DeadlineExceeded),
                "{source:?}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    within("agent shutdown", agent.shutdown()).await;
}

#[tokio::test]
async fn a_disabled_agent_never_yields_commands() {
    let cancel = CancellationToken::new();
    let agent = Agent::start(
        AgentConfig::default(),
        ComponentDescription::source("s"),
        cancel.clone(),
    )
    .await
    .unwrap();
    let mut commands = agent.chunk_commands().unwrap();
    assert!(commands_empty(&mut commands).await);
    assert!(matches!(
        agent
            .report_chunk(&ChunkReport::running(&attempt("j", 0, 1)))
            .await,
        Err(Error::Disabled)
    ));
    cancel.cancel();
    within("agent shutdown", agent.shutdown()).await;
    assert_eq!(commands.recv().await, None);
}

#[tokio::test]
async fn the_chunk_stream_and_reports_carry_the_configured_token() {
    init_tracing();
    let fake = FakeReplay::default();
    let server = serve(fake.clone()).await;
    let config = AgentConfig {
        enabled: true,
        endpoints: vec![server.addr.to_string()],
        request_timeout: Duration::from_secs(2),
        component_id: ComponentId::new("src-7"),
        token: Some(flowctl_agent::BearerToken::new("t0ken").unwrap()),
        ..AgentConfig::default()
    };
    let agent = Agent::start(
        config,
        ComponentDescription::source("src"),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let _commands = agent.chunk_commands().unwrap();
    let _stream = fake.wait_stream(0).await;
    let c = attempt("job-t", 0, 1);
    assert!(agent.report_chunk(&ChunkReport::running(&c)).await.unwrap());
    assert_eq!(
        fake.state().authorization,
        [
            Some("Bearer t0ken".to_owned()),
            Some("Bearer t0ken".to_owned())
        ]
    );
    within("agent shutdown", agent.shutdown()).await;
}
