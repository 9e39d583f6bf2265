//! The agent against tiny in-test gRPC servers (real tonic servers on 127.0.0.1, port 0) that
//! implement the two control-plane APIs and record every call. The servers can refuse
//! registrations with UNAVAILABLE and answer heartbeats with NOT_FOUND, the way a flowctl node
//! without a leader or with a forgotten registration does.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowctl_agent::{
    Agent, AgentConfig, AgentHandle, Api, CancellationToken, ComponentDescription, ComponentId,
    HealthStatus, HEALTH_ENDPOINT_METADATA_KEY,
};
use flowctl_proto::legacy::control_plane_server::{ControlPlane, ControlPlaneServer};
use flowctl_proto::v1::control_plane_service_server::{
    ControlPlaneService, ControlPlaneServiceServer,
};
use flowctl_proto::{legacy, v1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Fake control planes

#[derive(Default)]
struct Recorded<Reg, Hb> {
    registers: Vec<Reg>,
    heartbeats: Vec<Hb>,
    unregisters: Vec<String>,
    known: HashSet<String>,
    generated: usize,
    /// Answer this many registrations with UNAVAILABLE first.
    unavailable_registers: usize,
    /// Forget the component on this many heartbeats, answering NOT_FOUND.
    forget_on_heartbeat: usize,
}

impl<Reg, Hb> Recorded<Reg, Hb> {
    fn register(&mut self, req: Reg, asked: String) -> Result<String, Status> {
        self.registers.push(req);
        if self.unavailable_registers > 0 {
            self.unavailable_registers -= 1;
            return Err(Status::unavailable("no leader yet"));
        }
        let id = if asked.is_empty() {
            self.generated += 1;
            format!("gen-{}", self.generated)
        } else {
            asked
        };
        self.known.insert(id.clone());
        Ok(id)
    }

    fn heartbeat(&mut self, id: &str, req: Hb) -> Result<(), Status> {
        self.heartbeats.push(req);
        if self.forget_on_heartbeat > 0 {
            self.forget_on_heartbeat -= 1;
            self.known.remove(id);
        }
        if self.known.contains(id) {
            Ok(())
        } else {
            Err(Status::not_found(format!("unknown service id {id}")))
        }
    }
}

type V1State = Arc<Mutex<Recorded<v1::RegisterRequest, v1::HeartbeatRequest>>>;
type LegacyState = Arc<Mutex<Recorded<legacy::ServiceInfo, legacy::ServiceHeartbeat>>>;

#[derive(Clone, Default)]
struct FakeV1(V1State);

#[tonic::async_trait]
impl ControlPlaneService for FakeV1 {
    async fn register_component(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let req = request.into_inner();
        let asked = if req.component_id.is_empty() {
            req.component
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default()
        } else {
            req.component_id.clone()
        };
        let id = self.0.lock().unwrap().register(req, asked)?;
        Ok(Response::new(v1::RegisterResponse {
            service_id: id,
            assigned_topics: vec!["pipeline.edge.1".into()],
            connection_info: [("brokers".to_owned(), "kafka:9092".to_owned())].into(),
        }))
    }

    async fn unregister_component(
        &self,
        request: Request<v1::UnregisterRequest>,
    ) -> Result<Response<()>, Status> {
        let mut s = self.0.lock().unwrap();
        let id = request.into_inner().service_id;
        s.known.remove(&id);
        s.unregisters.push(id);
        Ok(Response::new(()))
    }

    async fn discover_components(
        &self,
        _: Request<v1::DiscoveryRequest>,
    ) -> Result<Response<v1::DiscoveryResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let id = req.service_id.clone();
        self.0.lock().unwrap().heartbeat(&id, req)?;
        Ok(Response::new(()))
    }

    async fn get_component_status(
        &self,
        _: Request<v1::ComponentStatusRequest>,
    ) -> Result<Response<v1::ComponentStatusResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_components(
        &self,
        _: Request<v1::ListComponentsRequest>,
    ) -> Result<Response<v1::ListComponentsResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

#[derive(Clone, Default)]
struct FakeLegacy(LegacyState);

#[tonic::async_trait]
impl ControlPlane for FakeLegacy {
    async fn register(
        &self,
        request: Request<legacy::ServiceInfo>,
    ) -> Result<Response<legacy::RegistrationAck>, Status> {
        let req = request.into_inner();
        let asked = if req.component_id.is_empty() {
            req.service_id.clone()
        } else {
            req.component_id.clone()
        };
        let id = self.0.lock().unwrap().register(req, asked)?;
        Ok(Response::new(legacy::RegistrationAck {
            service_id: id,
            topic_names: vec!["pipeline.edge.2".into()],
            connection_info: Default::default(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<legacy::ServiceHeartbeat>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let id = req.service_id.clone();
        self.0.lock().unwrap().heartbeat(&id, req)?;
        Ok(Response::new(()))
    }

    async fn get_service_status(
        &self,
        _: Request<legacy::ServiceInfo>,
    ) -> Result<Response<legacy::ServiceStatus>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_services(&self, _: Request<()>) -> Result<Response<legacy::ServiceList>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// A gRPC server running on a listener; it stops when dropped, or for certain with `stop`.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Server {
    fn spawn(listener: TcpListener, router: tonic::transport::server::Router) -> Server {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener),
            stop.clone().cancelled_owned(),
        ));
        Server {
            addr,
            stop,
            task: Some(task),
        }
    }

    /// Stops the server and waits until it has closed its connections.
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            within("the fake server to stop", task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn serve_v1_on(listener: TcpListener, fake: FakeV1) -> Server {
    let router =
        tonic::transport::Server::builder().add_service(ControlPlaneServiceServer::new(fake));
    Server::spawn(listener, router)
}

async fn serve_v1(fake: FakeV1) -> Server {
    serve_v1_on(listen().await, fake)
}

async fn serve_legacy(fake: FakeLegacy) -> Server {
    let router = tonic::transport::Server::builder().add_service(ControlPlaneServer::new(fake));
    Server::spawn(listen().await, router)
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

fn config(endpoints: &[SocketAddr]) -> AgentConfig {
    AgentConfig {
        enabled: true,
        endpoints: endpoints.iter().map(ToString::to_string).collect(),
        heartbeat_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(2),
        ..AgentConfig::default()
    }
}

fn processor() -> ComponentDescription {
    ComponentDescription::processor("ttp-processor")
        .with_version("0.1.0")
        .with_input_event_type("stellar.ledger.v1.LedgerCloseMeta")
        .with_output_event_type("token_transfer.v1.TokenTransferEvent")
        .with_metadata("network", "testnet")
}

/// Polls `cond` until it holds, failing the test after [`WAIT`].
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

/// A plain HTTP/1.1 GET; returns the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    Ok((code, body.to_owned()))
}

async fn shutdown(agent: &AgentHandle) {
    within("agent shutdown", agent.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn registers_heartbeats_with_counters_and_unregisters_on_shutdown() {
    init_tracing();
    let fake = FakeV1::default();
    let server = serve_v1(fake.clone()).await;
    let mut cfg = config(&[server.addr]);
    cfg.component_id = ComponentId::new("ttp-processor");
    let agent = Agent::start(cfg, processor(), CancellationToken::new())
        .await
        .unwrap();

    let reg = agent.wait_registered(WAIT).await.unwrap();
    assert_eq!(reg.service_id.as_str(), "ttp-processor");
    assert_eq!(reg.topics, ["pipeline.edge.1"]);
    assert_eq!(reg.connection_info["brokers"], "kafka:9092");
    assert_eq!(reg.endpoint, Some(server.addr.to_string()));
    {
        let s = fake.0.lock().unwrap();
        let req = &s.registers[0];
        assert_eq!(req.component_id, "ttp-processor");
        let info = req.component.as_ref().unwrap();
        assert_eq!(info.name, "ttp-processor");
        assert_eq!(info.r#type, v1::ComponentType::Processor as i32);
        assert_eq!(
            info.input_event_types,
            ["stellar.ledger.v1.LedgerCloseMeta"]
        );
        assert_eq!(
            info.output_event_types,
            ["token_transfer.v1.TokenTransferEvent"]
        );
        assert_eq!(
            info.metadata[HEALTH_ENDPOINT_METADATA_KEY],
            format!("http://{}/health", agent.health_addr())
        );
    }

    agent.set_health(HealthStatus::Healthy);
    agent.counter("events_processed").add(5);
    eventually("a heartbeat carrying the counter and status", || {
        fake.0.lock().unwrap().heartbeats.iter().any(|h| {
            h.service_id == "ttp-processor"
                && h.status == v1::HealthStatus::Healthy as i32
                && h.metrics.get("events_processed").map(String::as_str) == Some("5")
        })
    })
    .await;

    shutdown(&agent).await;
    assert_eq!(fake.0.lock().unwrap().unregisters, ["ttp-processor"]);
    assert_eq!(agent.health(), HealthStatus::Stopping);
    assert!(agent.registration().is_none());
    // The health server is gone once shutdown has returned.
    assert!(http_get(agent.health_addr(), "/health").await.is_err());
}

#[tokio::test]
async fn heartbeat_not_found_makes_the_agent_register_again_with_the_same_id() {
    init_tracing();
    let fake = FakeV1::default();
    let server = serve_v1(fake.clone()).await;
    // No component id anywhere: the control plane generates one, and the agent must ask for
    // that same id when it registers again.
    let agent = Agent::start(
        config(&[server.addr]),
        processor(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let reg = agent.wait_registered(WAIT).await.unwrap();
    assert_eq!(reg.service_id.as_str(), "gen-1");

    fake.0.lock().unwrap().forget_on_heartbeat = 1;
    eventually("a second registration", || {
        fake.0.lock().unwrap().registers.len() == 2
    })
    .await;
    let asked = fake.0.lock().unwrap().registers[1]
        .component
        .as_ref()
        .unwrap()
        .id
        .clone();
    assert_eq!(asked, "gen-1");

    // Heartbeats are accepted again afterwards.
    let before = fake.0.lock().unwrap().heartbeats.len();
    eventually("accepted heartbeats after re-registration", || {
        let s = fake.0.lock().unwrap();
        s.heartbeats.len() >= before + 2 && s.known.contains("gen-1")
    })
    .await;
    assert_eq!(
        agent
            .wait_registered(WAIT)
            .await
            .unwrap()
            .service_id
            .as_str(),
        "gen-1"
    );
    assert_eq!(fake.0.lock().unwrap().generated, 1);

    let (_, metrics) = http_get(agent.health_addr(), "/metrics").await.unwrap();
    assert!(
        metrics.contains("flowctl_agent_registrations_total 2\n"),
        "{metrics}"
    );

    shutdown(&agent).await;
    assert_eq!(fake.0.lock().unwrap().unregisters, ["gen-1"]);
}

#[tokio::test]
async fn registration_retries_and_fails_over_until_a_control_plane_is_up() {
    init_tracing();
    // Endpoint A refuses connections: a listener holds 127.0.0.1:P, so nothing else can take
    // port P on the other loopback address 127.0.0.2, where connecting is refused.
    let holder = listen().await;
    let refused: SocketAddr = format!("127.0.0.2:{}", holder.local_addr().unwrap().port())
        .parse()
        .unwrap();
    // Endpoint B is a node that is down at first: its port is bound but nothing answers, and
    // once it answers it has no leader for two more registrations.
    let late = listen().await;
    let late_addr = late.local_addr().unwrap();

    let mut cfg = config(&[refused, late_addr]);
    cfg.request_timeout = Duration::from_millis(300);
    let agent = Agent::start(cfg, processor(), CancellationToken::new())
        .await
        .unwrap();

    eventually_metric(&agent, "flowctl_agent_registration_failures_total", 2).await;
    assert!(agent.registration().is_none());

    let fake = FakeV1::default();
    fake.0.lock().unwrap().unavailable_registers = 2;
    let _server = serve_v1_on(late, fake.clone());

    let reg = agent.wait_registered(WAIT).await.unwrap();
    assert_eq!(reg.endpoint, Some(late_addr.to_string()));
    // Two refused with UNAVAILABLE, then the accepted one. Requests of earlier rounds that sat
    // in the unanswered socket may arrive too, so this is a lower bound.
    assert!(fake.0.lock().unwrap().registers.len() >= 3);
    assert_eq!(fake.0.lock().unwrap().known.len(), 1);

    shutdown(&agent).await;
    assert_eq!(fake.0.lock().unwrap().unregisters.len(), 1);
    drop(holder);
}

/// Polls `/metrics` until the metric `name` reaches `min`, failing the test after [`WAIT`].
async fn eventually_metric(agent: &AgentHandle, name: &str, min: u64) {
    let until = Instant::now() + WAIT;
    loop {
        let (_, text) = http_get(agent.health_addr(), "/metrics").await.unwrap();
        if metric(&text, name) >= min {
            return;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {name} >= {min}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn legacy_api_registers_heartbeats_and_registers_again_after_not_found() {
    init_tracing();
    let fake = FakeLegacy::default();
    let server = serve_legacy(fake.clone()).await;
    let mut cfg = config(&[server.addr]);
    cfg.api = Api::Legacy;
    cfg.component_id = ComponentId::new("consumer-app");
    let consumer = ComponentDescription::consumer("consumer-app")
        .with_input_event_type("token_transfer.v1.TokenTransferEvent")
        .with_max_inflight(32);
    let agent = Agent::start(cfg, consumer, CancellationToken::new())
        .await
        .unwrap();

    let reg = agent.wait_registered(WAIT).await.unwrap();
    assert_eq!(reg.service_id.as_str(), "consumer-app");
    assert_eq!(reg.topics, ["pipeline.edge.2"]);
    {
        let s = fake.0.lock().unwrap();
        let info = &s.registers[0];
        assert_eq!(info.service_type, legacy::ServiceType::Sink as i32);
        assert_eq!(info.component_id, "consumer-app");
        assert_eq!(info.max_inflight, 32);
        assert_eq!(
            info.health_endpoint,
            format!("http://{}/health", agent.health_addr())
        );
    }

    agent.counter("events_consumed").add(3);
    eventually(
        "a heartbeat with the counter as a double and a timestamp",
        || {
            fake.0
                .lock()
                .unwrap()
                .heartbeats
                .iter()
                .any(|h| h.metrics.get("events_consumed") == Some(&3.0) && h.timestamp.is_some())
        },
    )
    .await;

    fake.0.lock().unwrap().forget_on_heartbeat = 1;
    eventually("a second registration", || {
        fake.0.lock().unwrap().registers.len() == 2
    })
    .await;
    assert_eq!(
        fake.0.lock().unwrap().registers[1].component_id,
        "consumer-app"
    );

    shutdown(&agent).await;
    // The legacy API has no unregister call; shutting down must still finish promptly.
    assert!(fake.0.lock().unwrap().unregisters.is_empty());
}

#[tokio::test]
async fn health_and_metrics_answer_over_http() {
    init_tracing();
    let fake = FakeV1::default();
    let server = serve_v1(fake.clone()).await;
    let mut cfg = config(&[server.addr]);
    cfg.component_id = ComponentId::new("stellar-live-source");
    let source = ComponentDescription::source("stellar-live-source")
        .with_output_event_type("stellar.ledger.v1.LedgerCloseMeta");
    let agent = Agent::start(cfg, source, CancellationToken::new())
        .await
        .unwrap();
    agent.wait_registered(WAIT).await.unwrap();
    agent.set_health(HealthStatus::Healthy);
    agent.counter("ledgers_produced").add(2);
    agent.gauge("last_ledger").set(123456.0);

    let (code, body) = http_get(agent.health_addr(), "/health").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["component"], "stellar-live-source");
    assert_eq!(json["component_id"], "stellar-live-source");
    assert_eq!(json["control_plane"], "v1");
    assert_eq!(json["registered"], true);
    assert_eq!(json["service_id"], "stellar-live-source");
    assert_eq!(json["control_plane_endpoint"], server.addr.to_string());
    assert_eq!(json["metrics"]["ledgers_produced"], 2);
    assert_eq!(json["metrics"]["last_ledger"], 123456.0);

    let (code, text) = http_get(agent.health_addr(), "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        text.contains("# TYPE ledgers_produced counter\nledgers_produced 2\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE last_ledger gauge\nlast_ledger 123456\n"),
        "{text}"
    );
    assert!(text.contains("flowctl_agent_registered 1\n"), "{text}");
    assert_eq!(metric(&text, "flowctl_agent_registrations_total"), 1);

    agent.set_health(HealthStatus::Unhealthy);
    let (code, body) = http_get(agent.health_addr(), "/health").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("\"status\":\"unhealthy\""), "{body}");

    let (code, _) = http_get(agent.health_addr(), "/nope").await.unwrap();
    assert_eq!(code, 404);

    shutdown(&agent).await;
}

#[tokio::test]
async fn a_health_change_is_reported_without_waiting_for_the_interval() {
    init_tracing();
    let fake = FakeV1::default();
    let server = serve_v1(fake.clone()).await;
    let mut cfg = config(&[server.addr]);
    cfg.heartbeat_interval = Duration::from_secs(3600);
    let agent = Agent::start(cfg, processor(), CancellationToken::new())
        .await
        .unwrap();
    agent.wait_registered(WAIT).await.unwrap();
    agent.set_health(HealthStatus::Degraded);
    eventually("a heartbeat reporting DEGRADED", || {
        fake.0
            .lock()
            .unwrap()
            .heartbeats
            .iter()
            .any(|h| h.status == v1::HealthStatus::Degraded as i32)
    })
    .await;
    shutdown(&agent).await;
}

#[tokio::test]
async fn cancelling_the_parent_token_unregisters() {
    init_tracing();
    let fake = FakeV1::default();
    let server = serve_v1(fake.clone()).await;
    let cancel = CancellationToken::new();
    let agent = Agent::start(config(&[server.addr]), processor(), cancel.clone())
        .await
        .unwrap();
    let reg = agent.wait_registered(WAIT).await.unwrap();
    cancel.cancel();
    eventually("an unregister call", || {
        !fake.0.lock().unwrap().unregisters.is_empty()
    })
    .await;
    assert_eq!(
        fake.0.lock().unwrap().unregisters,
        [reg.service_id.as_str()]
    );
    // shutdown() after the token fired waits for the same, already finished, shutdown.
    shutdown(&agent).await;
    assert_eq!(fake.0.lock().unwrap().unregisters.len(), 1);
    assert!(agent.is_stopping());
}

#[tokio::test]
async fn shutdown_is_bounded_when_the_control_plane_is_gone() {
    init_tracing();
    let fake = FakeV1::default();
    let server = serve_v1(fake.clone()).await;
    let mut cfg = config(&[server.addr]);
    cfg.request_timeout = Duration::from_millis(300);
    let agent = Agent::start(cfg, processor(), CancellationToken::new())
        .await
        .unwrap();
    agent.wait_registered(WAIT).await.unwrap();
    server.stop().await;
    let started = Instant::now();
    shutdown(&agent).await;
    assert!(fake.0.lock().unwrap().unregisters.is_empty());
    // The unregister attempt is bounded by request_timeout (plus the HTTP grace at worst).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Serves `fake` behind an interceptor that records every call's `authorization` header.
fn serve_v1_recording_auth(
    listener: TcpListener,
    fake: FakeV1,
) -> (Server, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = ControlPlaneServiceServer::with_interceptor(fake, move |req: Request<()>| {
        let header = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        record.lock().unwrap().push(header);
        Ok(req)
    });
    let router = tonic::transport::Server::builder().add_service(service);
    (Server::spawn(listener, router), seen)
}

/// Runs an agent through register, a heartbeat and unregister; returns each call's
/// `authorization` header.
async fn authorization_headers(token: Option<&str>) -> Vec<Option<String>> {
    let fake = FakeV1::default();
    let (server, seen) = serve_v1_recording_auth(listen().await, fake.clone());
    let mut cfg = config(&[server.addr]);
    cfg.component_id = ComponentId::new("ttp-processor");
    cfg.token = token.map(|t| flowctl_agent::BearerToken::new(t).unwrap());
    let agent = Agent::start(cfg, processor(), CancellationToken::new())
        .await
        .unwrap();
    agent.wait_registered(WAIT).await.unwrap();
    eventually("a heartbeat", || {
        !fake.0.lock().unwrap().heartbeats.is_empty()
    })
    .await;
    shutdown(&agent).await;
    let s = fake.0.lock().unwrap();
    assert_eq!(s.unregisters, ["ttp-processor"]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        s.registers.len() + s.heartbeats.len() + s.unregisters.len()
    );
    seen
}

#[tokio::test]
async fn every_control_plane_call_carries_the_configured_token() {
    init_tracing();
    let seen = authorization_headers(Some("t0ken")).await;
    assert!(
        seen.iter().all(|h| h.as_deref() == Some("Bearer t0ken")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn without_a_token_the_agent_sends_no_credentials() {
    init_tracing();
    let seen = authorization_headers(None).await;
    assert!(seen.iter().all(Option::is_none), "{seen:?}");
}
