//! The agent: one lifecycle task (register → heartbeat → unregister) and one HTTP task, both
//! owned by a `TaskTracker` and stopped through one `CancellationToken`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;

use crate::chunks::{ChunkCommands, ChunkReport, Chunks};
use crate::component::{ComponentDescription, HealthStatus};
use crate::config::AgentConfig;
use crate::control_plane::{ControlPlane, RegisterInput, Registration, ServiceId};
use crate::metrics::{AgentStats, Counter, Gauge, Registry};
use crate::{http, Error};

/// The first wait after a failed registration round; it doubles up to [`MAX_REGISTER_BACKOFF`].
pub const FIRST_REGISTER_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between registration rounds.
pub const MAX_REGISTER_BACKOFF: Duration = Duration::from_secs(30);
/// Heartbeats sent because the health status changed are at least this far apart, so a
/// flapping component cannot flood the control plane.
pub const MIN_HEARTBEAT_GAP: Duration = Duration::from_millis(250);
/// Each heartbeat wait is the interval times a factor in `1 ± HEARTBEAT_JITTER`, so that many
/// components started together do not heartbeat in lockstep.
pub const HEARTBEAT_JITTER: f64 = 0.1;

/// State shared by the handle, the lifecycle task and the HTTP server. No lock in it is ever
/// held across an `.await`.
pub(crate) struct Shared {
    pub(crate) config: AgentConfig,
    pub(crate) component: ComponentDescription,
    pub(crate) metrics: Registry,
    pub(crate) stats: AgentStats,
    health: AtomicU8,
    health_changed: Notify,
    pub(crate) registration: watch::Sender<Option<Registration>>,
    pub(crate) started: Instant,
    pub(crate) health_addr: SocketAddr,
    pub(crate) chunks: Chunks,
}

impl Shared {
    pub(crate) fn health(&self) -> HealthStatus {
        HealthStatus::from_u8(self.health.load(Ordering::Relaxed))
    }

    fn set_health(&self, status: HealthStatus) -> bool {
        self.health.swap(status.to_u8(), Ordering::Relaxed) != status.to_u8()
    }

    fn health_url(&self) -> String {
        format!("http://{}/health", self.health_addr)
    }

    fn set_registration(&self, r: Option<Registration>) {
        self.stats.registered.store(r.is_some(), Ordering::Relaxed);
        self.registration.send_replace(r);
    }
}

/// The entry point: [`Agent::start`]. No value of this type exists.
pub enum Agent {}

impl Agent {
    /// Binds the health server, then runs the agent in the background until `cancel` fires or
    /// [`AgentHandle::shutdown`] is called.
    ///
    /// It returns once the health server listens; it does not wait for the control plane.
    /// Registration is retried with backoff and jitter for as long as the agent runs (each
    /// round bounded by `request_timeout`, failing over across endpoints), because a component
    /// must keep working while the control plane is down or not yet up. Use
    /// [`AgentHandle::wait_registered`] to wait for it.
    ///
    /// ```text
    ///  agent                        control plane (any node)
    ///    │── Register ──────────────────▶│   retried with backoff until accepted
    ///    │◀──────────── service_id ──────│
    ///    │── Heartbeat(id, metrics) ────▶│   every interval ±10%, and on health change
    ///    │◀──────────── NOT_FOUND ───────│   the control plane forgot the id:
    ///    │── Register (same id) ────────▶│   register again at once
    ///    │        ... shutdown ...       │
    ///    │── Unregister(id) ────────────▶│   v1 only; legacy relies on the heartbeat TTL
    /// ```
    pub async fn start(
        config: AgentConfig,
        component: ComponentDescription,
        cancel: CancellationToken,
    ) -> Result<AgentHandle, Error> {
        let control_plane = if config.enabled {
            Some(ControlPlane::new(&config)?)
        } else {
            None
        };
        // Range replay commands get their own connections, so that a long-lived stream and
        // heartbeats never queue behind each other.
        let chunk_client = if config.enabled {
            Some(crate::control_plane::client(&config)?)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(config.health_addr)
            .await
            .map_err(|source| Error::BindHealth {
                addr: config.health_addr,
                source,
            })?;
        let health_addr = listener.local_addr().map_err(|source| Error::BindHealth {
            addr: config.health_addr,
            source,
        })?;

        let shared = Arc::new(Shared {
            config,
            component,
            metrics: Registry::default(),
            stats: AgentStats::default(),
            health: AtomicU8::new(HealthStatus::Starting.to_u8()),
            health_changed: Notify::new(),
            registration: watch::Sender::new(None),
            started: Instant::now(),
            health_addr,
            chunks: Chunks::new(chunk_client),
        });

        let cancel = cancel.child_token();
        // The HTTP server stops after the lifecycle task has unregistered, so that `/health`
        // answers `stopping` for as long as the component is still known to the control plane.
        let http_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(http::serve(listener, shared.clone(), http_stop.clone()));
        tracker.spawn(lifecycle(
            shared.clone(),
            control_plane,
            cancel.clone(),
            http_stop,
        ));
        tracker.close();

        tracing::info!(
            component = %shared.component.name,
            health = %health_addr,
            enabled = shared.config.enabled,
            api = %shared.config.api,
            "flowctl agent started"
        );
        Ok(AgentHandle {
            shared,
            cancel,
            tracker,
        })
    }
}

/// A cheap, cloneable handle to a running agent.
#[derive(Clone)]
pub struct AgentHandle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl AgentHandle {
    /// The counter named `name` (sanitized to a Prometheus name), created at zero on first use.
    /// It is exported on `/metrics` and sent in every heartbeat.
    pub fn counter(&self, name: &str) -> Counter {
        self.shared.metrics.counter(name)
    }

    /// The gauge named `name`, like [`counter`](Self::counter).
    pub fn gauge(&self, name: &str) -> Gauge {
        self.shared.metrics.gauge(name)
    }

    /// Sets the component's health. A change is reported to the control plane at once (v1 API)
    /// rather than at the next heartbeat.
    pub fn set_health(&self, status: HealthStatus) {
        if self.shared.set_health(status) {
            tracing::info!(status = %status, "component health changed");
            self.shared.health_changed.notify_one();
        }
    }

    pub fn health(&self) -> HealthStatus {
        self.shared.health()
    }

    /// The address the health server is bound to (useful when `HEALTH_PORT` was 0).
    pub fn health_addr(&self) -> SocketAddr {
        self.shared.health_addr
    }

    /// The current registration; `None` before the first one, while re-registering, and when
    /// the control plane is disabled.
    pub fn registration(&self) -> Option<Registration> {
        self.shared.registration.borrow().clone()
    }

    /// Waits until the agent holds a registration.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<Registration, Error> {
        if !self.shared.config.enabled {
            return Err(Error::Disabled);
        }
        let mut rx = self.shared.registration.subscribe();
        tokio::select! {
            r = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)) => match r {
                Ok(Ok(reg)) => reg.clone().ok_or(Error::Stopped),
                Ok(Err(_)) => Err(Error::Stopped),
                Err(_) => Err(Error::NotRegistered { waited: timeout }),
            },
            () = self.cancel.cancelled() => Err(Error::Stopped),
        }
    }

    /// Opens this instance's range replay commands: one `WatchChunks` stream for the component
    /// id (`FLOWCTL_COMPONENT_ID`, else the registered service id), kept open across endpoints
    /// with backoff and jitter until the agent stops, feeding a channel of
    /// [`CHUNK_COMMAND_CAPACITY`](crate::CHUNK_COMMAND_CAPACITY). A re-sent assignment that
    /// this process already handed out is not handed out again (see [`crate::chunks`]).
    ///
    /// With the control plane disabled the channel never yields a command. It can be opened
    /// once per agent; a second call is [`Error::ChunksAlreadyWatched`]. The watch task is
    /// owned by the agent: [`shutdown`](Self::shutdown) waits for it.
    pub fn chunk_commands(&self) -> Result<ChunkCommands, Error> {
        let (commands, task) = crate::chunks::open(&self.shared, &self.cancel)?;
        if let Some(task) = task {
            self.tracker.spawn(task);
        }
        Ok(commands)
    }

    /// Reports the progress of a chunk attempt; returns whether the control plane accepted it.
    /// `false` means another attempt owns the chunk: stop working on it.
    ///
    /// Any node serves it. Errors another try may fix (`UNAVAILABLE`, timeouts, `ABORTED`,
    /// `RESOURCE_EXHAUSTED`) are tried again with backoff, at most
    /// [`REPORT_TRIES`](crate::REPORT_TRIES) times; others (`NOT_FOUND`,
    /// `FAILED_PRECONDITION`, ...) are returned at once as [`Error::ChunkReport`].
    pub async fn report_chunk(&self, report: &ChunkReport) -> Result<bool, Error> {
        crate::chunks::report(&self.shared, &self.cancel, report).await
    }

    /// Whether the agent has been told to stop (by [`shutdown`](Self::shutdown) or the token
    /// given to [`Agent::start`]).
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Stops the agent: reports `stopping` on `/health`, stops heartbeats, unregisters (v1
    /// API; bounded by `request_timeout`), then stops the health server. Returns when all of
    /// that is done. Calling it again, or from another clone, waits for the same shutdown.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("component", &self.shared.component.name)
            .field("health_addr", &self.shared.health_addr)
            .field("health", &self.shared.health())
            .field("registration", &self.registration())
            .finish()
    }
}

#[tracing::instrument(name = "flowctl_agent", skip_all, fields(component = %shared.component.name))]
async fn lifecycle(
    shared: Arc<Shared>,
    control_plane: Option<ControlPlane>,
    cancel: CancellationToken,
    http_stop: CancellationToken,
) {
    match control_plane {
        Some(cp) => {
            let last = register_and_heartbeat(&shared, &cp, &cancel).await;
            shared.set_health(HealthStatus::Stopping);
            if let Some(id) = last {
                shared.set_registration(None);
                match cp.unregister(&id).await {
                    Ok(true) => tracing::info!(service_id = %id, "unregistered"),
                    Ok(false) => tracing::info!(
                        service_id = %id,
                        "the legacy API has no unregister; the control plane will expire the registration"
                    ),
                    Err(status) => tracing::warn!(
                        service_id = %id,
                        code = ?status.code(),
                        message = status.message(),
                        "could not unregister; the control plane will expire the registration"
                    ),
                }
            }
        }
        None => {
            cancel.cancelled().await;
            shared.set_health(HealthStatus::Stopping);
        }
    }
    http_stop.cancel();
    tracing::info!("flowctl agent stopped");
}

/// Runs until `cancel` fires; returns the service id held at that moment.
async fn register_and_heartbeat(
    shared: &Shared,
    cp: &ControlPlane,
    cancel: &CancellationToken,
) -> Option<ServiceId> {
    let interval = shared.config.heartbeat_interval;
    let mut registered: Option<ServiceId> = None;
    let mut previous: Option<ServiceId> = None;
    let mut backoff = FIRST_REGISTER_BACKOFF;
    let mut last_heartbeat = tokio::time::Instant::now();
    let health_url = shared.health_url();
    loop {
        let Some(id) = registered.clone() else {
            let input = RegisterInput {
                component: &shared.component,
                component_id: shared.config.component_id.as_ref(),
                previous: previous.as_ref(),
                health_url: &health_url,
            };
            let result = tokio::select! {
                r = cp.register(&input) => r,
                () = cancel.cancelled() => return None,
            };
            match result {
                Ok(reg) => {
                    tracing::info!(
                        service_id = %reg.service_id,
                        endpoint = reg.endpoint.as_deref().unwrap_or(""),
                        topics = ?reg.topics,
                        "registered with the control plane"
                    );
                    shared.stats.registrations.fetch_add(1, Ordering::Relaxed);
                    registered = Some(reg.service_id.clone());
                    previous = Some(reg.service_id.clone());
                    shared.set_registration(Some(reg));
                    backoff = FIRST_REGISTER_BACKOFF;
                    last_heartbeat = tokio::time::Instant::now();
                }
                Err(status) => {
                    shared
                        .stats
                        .registration_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let wait = jitter(backoff, 0.5);
                    tracing::warn!(
                        code = ?status.code(),
                        message = status.message(),
                        retry_in = ?wait,
                        "registration failed"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = cancel.cancelled() => return None,
                    }
                    backoff = (backoff * 2).min(MAX_REGISTER_BACKOFF);
                }
            }
            continue;
        };

        let due = last_heartbeat + jitter(interval, HEARTBEAT_JITTER);
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = shared.health_changed.notified() => {
                tokio::select! {
                    () = tokio::time::sleep_until(last_heartbeat + MIN_HEARTBEAT_GAP) => {}
                    () = cancel.cancelled() => return Some(id),
                }
            }
            () = cancel.cancelled() => return Some(id),
        }
        let metrics = shared.metrics.snapshot();
        let result = tokio::select! {
            r = cp.heartbeat(&id, shared.health(), &metrics) => r,
            () = cancel.cancelled() => return Some(id),
        };
        last_heartbeat = tokio::time::Instant::now();
        match result {
            Ok(()) => {
                shared.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(service_id = %id, "heartbeat accepted");
            }
            Err(status) if status.code() == Code::NotFound => {
                shared
                    .stats
                    .heartbeat_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    service_id = %id,
                    "the control plane does not know this component; registering again"
                );
                registered = None;
                shared.set_registration(None);
            }
            Err(status) => {
                shared
                    .stats
                    .heartbeat_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    service_id = %id,
                    code = ?status.code(),
                    message = status.message(),
                    "heartbeat failed; will retry at the next interval"
                );
            }
        }
    }
}

pub(crate) use flowctl_proto::retry::jitter;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_agent_serves_health_and_shuts_down() {
        let cancel = CancellationToken::new();
        let h = Agent::start(
            AgentConfig::default(),
            ComponentDescription::source("s"),
            cancel.clone(),
        )
        .await
        .unwrap();
        assert_ne!(h.health_addr().port(), 0);
        assert!(matches!(
            h.wait_registered(Duration::from_millis(10)).await,
            Err(Error::Disabled)
        ));
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), h.shutdown())
            .await
            .unwrap();
        assert_eq!(h.health(), HealthStatus::Stopping);
    }
}
