//! Component liveness without writing heartbeats to the log.
//!
//! ```text
//! heartbeat ─▶ any node ─(follower: Relay, batched every 50 ms)─▶ leader's Liveness actor
//! leader, every sweep: decide() over registry + last-seen ─▶ propose transitions only
//! ```
//!
//! The leader keeps last-seen times and the latest metrics in memory. Only transitions become
//! commands: healthy → unhealthy after the TTL, unhealthy → healthy after a heartbeat, and
//! unregistered after the expiry. A node that has just become leader grants every component
//! one full TTL first (it has no heartbeat history), so failover raises no false alarms.

use flowctl_proto::internal::v1 as ipb;
use flowctl_proto::internal::v1::liveness_service_client::LivenessServiceClient;
use flowctl_raft::RaftNode;
use flowctl_state::components::{SetHealth, Unregister};
use flowctl_state::{Command, ComponentId, ComponentRecord};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Heartbeats waiting for the liveness actor or the relay; beyond this, RESOURCE_EXHAUSTED.
pub const BEAT_QUEUE: usize = 65_536;
/// Most heartbeats in one relay RPC.
const RELAY_BATCH: usize = 4096;
const RELAY_INTERVAL: Duration = Duration::from_millis(50);

/// Milliseconds since the Unix epoch; injectable so tests can drive time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// One heartbeat as it travels to the leader.
#[derive(Debug, Clone)]
pub struct Beat {
    pub id: ComponentId,
    pub metrics: BTreeMap<String, String>,
    /// `flowctl.v1.HealthStatus` as reported (0 = unknown, also for the legacy API).
    pub status: i32,
}

/// What the leader knows of a component beyond the registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveEntry {
    pub last_heartbeat_ms: u64,
    pub metrics: BTreeMap<String, String>,
    pub status: i32,
}

/// A transition the leader proposes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transition {
    Down(ComponentId),
    Up(ComponentId),
    Expire(ComponentId),
}

/// Decides the transitions due now. Pure: the registry, the in-memory view, the time this
/// node became leader, and the limits in; transitions out.
pub fn decide(
    registry: &BTreeMap<ComponentId, ComponentRecord>,
    live: &HashMap<ComponentId, LiveEntry>,
    now_ms: u64,
    leader_since_ms: u64,
    ttl_ms: u64,
    expiry_ms: Option<u64>,
) -> Vec<Transition> {
    let mut out = Vec::new();
    for (id, rec) in registry {
        let beat = live.get(id).map(|l| l.last_heartbeat_ms).unwrap_or(0);
        let last_alive = beat.max(leader_since_ms).max(rec.status_changed_at_ms);
        if let Some(exp) = expiry_ms {
            if now_ms.saturating_sub(last_alive) > exp {
                out.push(Transition::Expire(id.clone()));
                continue;
            }
        }
        if rec.healthy {
            if now_ms.saturating_sub(last_alive) > ttl_ms {
                out.push(Transition::Down(id.clone()));
            }
        } else if beat > rec.status_changed_at_ms {
            out.push(Transition::Up(id.clone()));
        }
    }
    out
}

#[derive(Clone)]
pub struct LivenessOptions {
    pub ttl: Duration,
    /// `None` never expires components.
    pub expiry: Option<Duration>,
    pub sweep: Duration,
    pub clock: Clock,
}

enum Msg {
    Beats(Vec<Beat>),
    View(
        Vec<ComponentId>,
        oneshot::Sender<Vec<(ComponentId, LiveEntry)>>,
    ),
}

/// A cheap, cloneable handle on this node's liveness actor and relay.
#[derive(Clone)]
pub struct LivenessHandle {
    tx: mpsc::Sender<Msg>,
    relay: mpsc::Sender<Beat>,
    node: RaftNode,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("too many heartbeats queued; retry later")]
    Overloaded,
    #[error("liveness tracker stopped")]
    Stopped,
    #[error("the leader's live view is unavailable: {0}")]
    Unavailable(String),
}

impl LivenessHandle {
    /// Accepts a heartbeat: recorded here when this node leads, else relayed to the leader.
    pub fn beat(&self, beat: Beat) -> Result<(), Error> {
        let r = if self.node.is_leader() {
            self.tx
                .try_send(Msg::Beats(vec![beat]))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => Error::Overloaded,
                    mpsc::error::TrySendError::Closed(_) => Error::Stopped,
                })
        } else {
            self.relay.try_send(beat).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded,
                mpsc::error::TrySendError::Closed(_) => Error::Stopped,
            })
        };
        if r.is_ok() {
            metrics::counter!("flowctl_liveness_heartbeats_total").increment(1);
        }
        r
    }

    /// Heartbeats relayed from a follower (this node should be the leader).
    pub fn relayed(&self, beats: Vec<Beat>) -> Result<(), Error> {
        self.tx.try_send(Msg::Beats(beats)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Overloaded,
            mpsc::error::TrySendError::Closed(_) => Error::Stopped,
        })
    }

    /// This node's own view (meaningful on the leader). Empty `ids` means all.
    pub async fn local_view(
        &self,
        ids: Vec<ComponentId>,
    ) -> Result<Vec<(ComponentId, LiveEntry)>, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::View(ids, tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// The leader's view, from any node.
    pub async fn leader_view(
        &self,
        ids: Vec<ComponentId>,
    ) -> Result<HashMap<ComponentId, LiveEntry>, Error> {
        let (leader, addr) = self
            .node
            .wait_for_leader(Duration::from_secs(5))
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        if leader == self.node.id() {
            return Ok(self.local_view(ids).await?.into_iter().collect());
        }
        let ch = self
            .node
            .peers()
            .channel(&addr)
            .map_err(Error::Unavailable)?;
        let mut req = tonic::Request::new(ipb::LiveViewRequest {
            ids: ids.into_iter().map(|i| i.0).collect(),
        });
        req.set_timeout(Duration::from_secs(5));
        let resp = LivenessServiceClient::new(ch)
            .max_decoding_message_size(64 * 1024 * 1024)
            .live_view(req)
            .await
            .map_err(|s| Error::Unavailable(s.message().to_owned()))?
            .into_inner();
        Ok(resp
            .entries
            .into_iter()
            .map(|e| {
                (
                    ComponentId(e.id),
                    LiveEntry {
                        last_heartbeat_ms: e.last_heartbeat_ms,
                        metrics: e.metrics.into_iter().collect(),
                        status: e.status,
                    },
                )
            })
            .collect())
    }
}

/// Starts the liveness actor and the follower relay; both stop on `cancel`.
pub fn start(
    node: RaftNode,
    opts: LivenessOptions,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> LivenessHandle {
    let (tx, rx) = mpsc::channel(BEAT_QUEUE);
    let (relay_tx, relay_rx) = mpsc::channel(BEAT_QUEUE);
    tracker.spawn(run_actor(node.clone(), opts, rx, cancel.clone()));
    tracker.spawn(run_relay(node.clone(), relay_rx, cancel));
    LivenessHandle {
        tx,
        relay: relay_tx,
        node,
    }
}

async fn run_actor(
    node: RaftNode,
    opts: LivenessOptions,
    mut rx: mpsc::Receiver<Msg>,
    cancel: CancellationToken,
) {
    let mut live: HashMap<ComponentId, LiveEntry> = HashMap::new();
    let mut leader_since: Option<u64> = None;
    let in_flight: Arc<Mutex<HashSet<Transition>>> = Arc::default();
    let mut tick = tokio::time::interval(opts.sweep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            msg = rx.recv() => match msg {
                None => return,
                Some(Msg::Beats(beats)) => {
                    let now = (opts.clock)();
                    for b in beats {
                        let e = live.entry(b.id).or_default();
                        e.last_heartbeat_ms = now;
                        e.metrics = b.metrics;
                        e.status = b.status;
                    }
                }
                Some(Msg::View(ids, reply)) => {
                    let view = if ids.is_empty() {
                        live.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                    } else {
                        ids.into_iter().filter_map(|id| live.get(&id).cloned().map(|v| (id, v))).collect()
                    };
                    let _ = reply.send(view);
                }
            },
            _ = tick.tick() => {
                if !node.is_leader() {
                    // Only the leader keeps heartbeat history; a future leader starts afresh.
                    live.clear();
                    leader_since = None;
                    continue;
                }
                let now = (opts.clock)();
                let since = *leader_since.get_or_insert_with(|| {
                    tracing::info!("leading: every component gets one full TTL before it may be marked unhealthy");
                    now
                });
                // Decide under the state's read lock rather than cloning the registry:
                // with 100k components a copy per sweep would double the leader's memory.
                let ttl_ms = opts.ttl.as_millis() as u64;
                let expiry_ms = opts.expiry.map(|e| e.as_millis() as u64);
                let (due, _) = node.read_stale(|s| {
                    // Forget components that are no longer registered.
                    live.retain(|id, _| s.components.contains_key(id));
                    metrics::gauge!("flowctl_liveness_components").set(s.components.len() as f64);
                    decide(&s.components, &live, now, since, ttl_ms, expiry_ms)
                });
                for t in due {
                    propose_transition(&node, t, now, &in_flight);
                }
            }
        }
    }
}

/// Proposes one transition unless the same one is already in flight.
fn propose_transition(
    node: &RaftNode,
    t: Transition,
    now: u64,
    in_flight: &Arc<Mutex<HashSet<Transition>>>,
) {
    if !in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(t.clone())
    {
        return;
    }
    let cmd = match &t {
        Transition::Down(id) => Command::SetComponentHealth(SetHealth {
            id: id.clone(),
            healthy: false,
            at_ms: now,
        }),
        Transition::Up(id) => Command::SetComponentHealth(SetHealth {
            id: id.clone(),
            healthy: true,
            at_ms: now,
        }),
        Transition::Expire(id) => Command::UnregisterComponent(Unregister {
            id: id.clone(),
            reason: "expired".into(),
        }),
    };
    let node = node.clone();
    let in_flight = in_flight.clone();
    // Bounded by the number of registered components (one in flight per transition).
    tokio::spawn(async move {
        match node.propose(cmd).await {
            Ok(_) => {
                tracing::info!(transition = ?t, "component liveness transition");
                metrics::counter!("flowctl_liveness_transitions_total").increment(1);
            }
            Err(e) => {
                tracing::warn!(transition = ?t, error = %e, "liveness transition not committed")
            }
        }
        in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&t);
    });
}

async fn run_relay(node: RaftNode, mut rx: mpsc::Receiver<Beat>, cancel: CancellationToken) {
    let mut buf: Vec<Beat> = Vec::new();
    let mut tick = tokio::time::interval(RELAY_INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            b = rx.recv() => match b {
                None => return,
                Some(b) => {
                    buf.push(b);
                    if buf.len() < RELAY_BATCH {
                        continue;
                    }
                }
            },
            _ = tick.tick() => {}
        }
        if buf.is_empty() {
            continue;
        }
        let batch = std::mem::take(&mut buf);
        let n = batch.len();
        if let Err(e) = relay(&node, batch).await {
            // Heartbeats repeat; losing one batch costs at most one interval of freshness.
            metrics::counter!("flowctl_liveness_relay_dropped_total").increment(n as u64);
            tracing::debug!(error = %e, n, "heartbeat relay failed");
        }
    }
}

async fn relay(node: &RaftNode, beats: Vec<Beat>) -> Result<(), String> {
    let Some((leader, addr)) = node.leader() else {
        return Err("no leader known".into());
    };
    if leader == node.id() {
        return Err("this node became leader; dropping relayed beats".into());
    }
    let ch = node.peers().channel(&addr)?;
    let mut req = tonic::Request::new(ipb::HeartbeatBatch {
        beats: beats
            .into_iter()
            .map(|b| ipb::Beat {
                id: b.id.0,
                metrics: b.metrics.into_iter().collect(),
                status: b.status,
            })
            .collect(),
    });
    req.set_timeout(Duration::from_secs(2));
    LivenessServiceClient::new(ch)
        .relay_heartbeats(req)
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_owned())
}

/// Serves `flowctl.internal.v1.LivenessService`.
#[derive(Clone)]
pub struct LivenessService {
    pub handle: LivenessHandle,
}

#[tonic::async_trait]
impl ipb::liveness_service_server::LivenessService for LivenessService {
    async fn relay_heartbeats(
        &self,
        req: tonic::Request<ipb::HeartbeatBatch>,
    ) -> Result<tonic::Response<ipb::RelayResponse>, tonic::Status> {
        let beats: Vec<Beat> = req
            .into_inner()
            .beats
            .into_iter()
            .map(|b| Beat {
                id: ComponentId(b.id),
                metrics: b.metrics.into_iter().collect(),
                status: b.status,
            })
            .collect();
        let n = beats.len() as u32;
        self.handle
            .relayed(beats)
            .map_err(|e| tonic::Status::resource_exhausted(e.to_string()))?;
        Ok(tonic::Response::new(ipb::RelayResponse { accepted: n }))
    }

    async fn live_view(
        &self,
        req: tonic::Request<ipb::LiveViewRequest>,
    ) -> Result<tonic::Response<ipb::LiveViewResponse>, tonic::Status> {
        let ids = req.into_inner().ids.into_iter().map(ComponentId).collect();
        let view = self
            .handle
            .local_view(ids)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(ipb::LiveViewResponse {
            entries: view
                .into_iter()
                .map(|(id, e)| ipb::LiveEntry {
                    id: id.0,
                    last_heartbeat_ms: e.last_heartbeat_ms,
                    metrics: e.metrics.into_iter().collect(),
                    status: e.status,
                })
                .collect(),
            leader_id: self.handle.node.id(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowctl_state::components::{Api, ComponentKind, ComponentSpec};

    fn rec(id: &str, healthy: bool, changed: u64) -> (ComponentId, ComponentRecord) {
        let id = ComponentId(id.into());
        (
            id.clone(),
            ComponentRecord {
                spec: ComponentSpec {
                    id,
                    api: Api::V1,
                    kind: ComponentKind::Source,
                    name: String::new(),
                    description: String::new(),
                    version: String::new(),
                    input_event_types: vec![],
                    output_event_types: vec![],
                    endpoint: String::new(),
                    health_endpoint: String::new(),
                    max_inflight: 0,
                    metadata: BTreeMap::new(),
                },
                healthy,
                registered_at_ms: changed,
                status_changed_at_ms: changed,
                revision: 1,
            },
        )
    }

    fn beat_at(ms: u64) -> LiveEntry {
        LiveEntry {
            last_heartbeat_ms: ms,
            ..Default::default()
        }
    }

    #[test]
    fn healthy_component_goes_down_only_after_the_ttl() {
        let reg: BTreeMap<_, _> = [rec("a", true, 0)].into();
        let live: HashMap<_, _> = [(ComponentId("a".into()), beat_at(1_000))].into();
        assert!(decide(&reg, &live, 30_000, 0, 30_000, None).is_empty());
        assert_eq!(
            decide(&reg, &live, 31_001, 0, 30_000, None),
            vec![Transition::Down(ComponentId("a".into()))]
        );
    }

    #[test]
    fn a_new_leader_grants_a_full_ttl() {
        let reg: BTreeMap<_, _> = [rec("a", true, 0)].into();
        let none = HashMap::new();
        // Became leader at 100 s with no heartbeat history: nothing is due until 130 s.
        assert!(decide(&reg, &none, 129_000, 100_000, 30_000, None).is_empty());
        assert_eq!(decide(&reg, &none, 130_001, 100_000, 30_000, None).len(), 1);
    }

    #[test]
    fn a_heartbeat_after_going_down_brings_it_back() {
        let reg: BTreeMap<_, _> = [rec("a", false, 50_000)].into();
        let before: HashMap<_, _> = [(ComponentId("a".into()), beat_at(40_000))].into();
        assert!(decide(&reg, &before, 60_000, 0, 30_000, None).is_empty());
        let after: HashMap<_, _> = [(ComponentId("a".into()), beat_at(55_000))].into();
        assert_eq!(
            decide(&reg, &after, 60_000, 0, 30_000, None),
            vec![Transition::Up(ComponentId("a".into()))]
        );
    }

    #[test]
    fn silent_components_expire() {
        let reg: BTreeMap<_, _> = [rec("a", false, 0)].into();
        let none = HashMap::new();
        assert!(decide(&reg, &none, 1_000, 0, 30_000, Some(2_000)).is_empty());
        assert_eq!(
            decide(&reg, &none, 2_001, 0, 30_000, Some(2_000)),
            vec![Transition::Expire(ComponentId("a".into()))]
        );
    }
}
