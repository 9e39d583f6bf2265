//! Component liveness without writing heartbeats to the log.
//!
//! ```text
//! heartbeat ─▶ any node ─(follower: Relay, batched every 50 ms)─▶ leader's Liveness actor
//! leader, every sweep: decide() over registry + last-seen ─▶ propose transitions only
//! ```
//!
//! The leader keeps last-seen times and the latest metrics in memory. Only transitions become
//! commands: healthy → unhealthy after the TTL, unhealthy → healthy after a heartbeat, the
//! first heartbeat after a registration (which rollouts wait for), and unregistered after the
//! expiry. A node that has just become leader grants every component
//! one full TTL first (it has no heartbeat history), so failover raises no false alarms.
//!
//! Every decision is made on the leader's monotonic clock: when it last heard a component,
//! when it became leader, when it saw a component's health last change. Wall time is only
//! stamped into commands and replies for display, so a step of the wall clock (NTP, an
//! operator) neither marks components down nor expires them.

use crate::errors::ServiceError;
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
/// Most heartbeats a relay RPC may carry: well above the [`RELAY_BATCH`] a follower sends, so
/// that only a batch no follower builds is refused.
pub const MAX_RELAYED_BEATS: usize = 10_000;
/// Most metrics in one heartbeat. The leader keeps each component's latest metrics in memory,
/// so these bounds, with the registry's size, bound that memory.
pub const MAX_BEAT_METRICS: usize = 256;
/// Longest metric name in a heartbeat, in bytes.
pub const MAX_METRIC_KEY_BYTES: usize = 256;
/// Longest metric value in a heartbeat, in bytes.
pub const MAX_METRIC_VALUE_BYTES: usize = 256;

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

/// Milliseconds on a monotonic clock (since the first call in this process): liveness
/// decisions use it, never the wall clock.
pub fn monotonic_clock() -> Clock {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    Arc::new(move || start.elapsed().as_millis() as u64)
}

/// One heartbeat as it travels to the leader.
#[derive(Debug, Clone)]
pub struct Beat {
    pub id: ComponentId,
    pub metrics: BTreeMap<String, String>,
    /// `flowctl.v1.HealthStatus` as reported (0 = unknown, also for the legacy API).
    pub status: i32,
}

impl Beat {
    /// Checks the metrics against [`MAX_BEAT_METRICS`], [`MAX_METRIC_KEY_BYTES`] and
    /// [`MAX_METRIC_VALUE_BYTES`]; the message names the component and the bound.
    pub fn check(&self) -> Result<(), String> {
        if self.metrics.len() > MAX_BEAT_METRICS {
            return Err(format!(
                "heartbeat of {:?}: {} metrics, more than {MAX_BEAT_METRICS}",
                self.id.0,
                self.metrics.len()
            ));
        }
        for (k, v) in &self.metrics {
            if k.len() > MAX_METRIC_KEY_BYTES {
                return Err(format!(
                    "heartbeat of {:?}: a metric name of {} bytes, more than \
                     {MAX_METRIC_KEY_BYTES}",
                    self.id.0,
                    k.len()
                ));
            }
            if v.len() > MAX_METRIC_VALUE_BYTES {
                return Err(format!(
                    "heartbeat of {:?}: metric {:?} has a value of {} bytes, more than \
                     {MAX_METRIC_VALUE_BYTES}",
                    self.id.0,
                    k,
                    v.len()
                ));
            }
        }
        Ok(())
    }
}

/// What the leader knows of a component beyond the registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveEntry {
    /// Wall time of the last heartbeat, for display.
    pub last_heartbeat_ms: u64,
    /// Monotonic time of the last heartbeat, for decisions (not sent between nodes: only the
    /// leader's own clock means anything to it).
    pub seen_mono_ms: u64,
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

/// When the leader saw a component's health status as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The replicated status: healthy, and the proposer's stamp of its last change.
    status: (bool, u64),
    /// Monotonic time at which this leader first saw that status (for a status it decided
    /// itself, when it decided it: a heartbeat that arrives while the transition commits
    /// counts as after it).
    since_mono_ms: u64,
    /// When this leader decided the component down, until the change is seen committed.
    decided_down_mono_ms: Option<u64>,
}

/// Decides the transitions due now. Pure: the registry, the in-memory view, the statuses
/// seen so far (updated here), the monotonic time now and when this node became leader, and
/// the limits in; transitions out.
pub fn decide(
    registry: &BTreeMap<ComponentId, ComponentRecord>,
    live: &HashMap<ComponentId, LiveEntry>,
    seen: &mut HashMap<ComponentId, Observed>,
    now_mono_ms: u64,
    leader_since_mono_ms: u64,
    ttl_ms: u64,
    expiry_ms: Option<u64>,
) -> Vec<Transition> {
    let mut out = Vec::new();
    seen.retain(|id, _| registry.contains_key(id));
    for (id, rec) in registry {
        let status = (rec.healthy, rec.status_changed_at_ms);
        let obs = seen.entry(id.clone()).or_insert(Observed {
            status,
            since_mono_ms: now_mono_ms,
            decided_down_mono_ms: None,
        });
        if obs.status != status {
            let decided = obs.decided_down_mono_ms.take();
            obs.status = status;
            obs.since_mono_ms = match decided {
                Some(at) if !rec.healthy => at,
                _ => now_mono_ms,
            };
        }
        let beat = live.get(id).map(|l| l.seen_mono_ms).unwrap_or(0);
        let last_alive = beat.max(leader_since_mono_ms).max(obs.since_mono_ms);
        if let Some(exp) = expiry_ms {
            if now_mono_ms.saturating_sub(last_alive) > exp {
                out.push(Transition::Expire(id.clone()));
                continue;
            }
        }
        if rec.healthy {
            if now_mono_ms.saturating_sub(last_alive) > ttl_ms {
                obs.decided_down_mono_ms.get_or_insert(now_mono_ms);
                out.push(Transition::Down(id.clone()));
            } else if rec.awaiting_heartbeat && beat > obs.since_mono_ms {
                // Its first heartbeat since it registered: confirmed up.
                out.push(Transition::Up(id.clone()));
            }
        } else if beat > obs.since_mono_ms {
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
    /// Wall time, stamped into commands and shown; never decides anything.
    pub clock: Clock,
    /// Monotonic time, for every decision.
    pub mono: Clock,
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
    /// The heartbeat is beyond the bounds of [`Beat::check`].
    #[error("{0}")]
    Invalid(String),
    #[error("liveness tracker stopped")]
    Stopped,
    #[error("the leader's live view is unavailable: {0}")]
    Unavailable(String),
}

impl LivenessHandle {
    /// Accepts a heartbeat: recorded here when this node leads, else relayed to the leader.
    /// A heartbeat beyond the bounds is refused here, where it enters, so that a follower never
    /// relays one and the leader's refusal of a relayed batch never costs other components
    /// their heartbeats.
    pub fn beat(&self, beat: Beat) -> Result<(), Error> {
        beat.check().map_err(Error::Invalid)?;
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
                        // The leader's monotonic clock means nothing here.
                        seen_mono_ms: 0,
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
    tracker.spawn(run_relay(node.clone(), relay_rx, tx.clone(), cancel));
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
    let mut seen: HashMap<ComponentId, Observed> = HashMap::new();
    let mut leader_since: Option<u64> = None;
    let in_flight: Arc<Mutex<HashSet<Transition>>> = Arc::default();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_TRANSITIONS_IN_FLIGHT));
    // The transitions' proposals: this actor owns them and waits for them when it stops.
    let proposals = tokio_util::task::TaskTracker::new();
    let mut tick = tokio::time::interval(opts.sweep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            msg = rx.recv() => match msg {
                None => break,
                Some(Msg::Beats(beats)) => {
                    let now = (opts.clock)();
                    let mono = (opts.mono)();
                    for b in beats {
                        let e = live.entry(b.id).or_default();
                        e.last_heartbeat_ms = now;
                        e.seen_mono_ms = mono;
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
                    seen.clear();
                    leader_since = None;
                    continue;
                }
                let now = (opts.clock)();
                let mono = (opts.mono)();
                let since = *leader_since.get_or_insert_with(|| {
                    tracing::info!("leading: every component gets one full TTL before it may be marked unhealthy");
                    mono
                });
                // Decide under the state's read lock rather than cloning the registry:
                // with 100k components a copy per sweep would double the leader's memory.
                let ttl_ms = opts.ttl.as_millis() as u64;
                let expiry_ms = opts.expiry.map(|e| e.as_millis() as u64);
                let (due, _) = node.read_stale(|s| {
                    // Forget components that are no longer registered.
                    live.retain(|id, _| s.components.contains_key(id));
                    metrics::gauge!("flowctl_liveness_components").set(s.components.len() as f64);
                    decide(&s.components, &live, &mut seen, mono, since, ttl_ms, expiry_ms)
                });
                for t in due {
                    propose_transition(&node, t, now, &in_flight, &permits, &proposals);
                }
            }
        }
    }
    proposals.close();
    proposals.wait().await;
}

/// Most liveness transitions being proposed at once. A sweep that finds more (a mass of
/// registrations never heard from, every component of a partitioned fleet going quiet) queues
/// the rest behind these: the leader's own decisions take at most this share of the proposal
/// queue ([`flowctl_raft::PROPOSAL_QUEUE`]), so clients' writes are not refused as overloaded
/// because of them, and none of the transitions is dropped.
pub const MAX_TRANSITIONS_IN_FLIGHT: usize = 512;

/// Proposes one transition unless the same one is already in flight, at most
/// [`MAX_TRANSITIONS_IN_FLIGHT`] at a time (`permits`).
fn propose_transition(
    node: &RaftNode,
    t: Transition,
    now: u64,
    in_flight: &Arc<Mutex<HashSet<Transition>>>,
    permits: &Arc<tokio::sync::Semaphore>,
    proposals: &tokio_util::task::TaskTracker,
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
    let permits = permits.clone();
    // One task per transition (bounded by the registered components), each proposing only
    // once it holds one of the MAX_TRANSITIONS_IN_FLIGHT permits.
    proposals.spawn(async move {
        // The semaphore is never closed, so a permit always comes.
        let _permit = permits.acquire_owned().await;
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

async fn run_relay(
    node: RaftNode,
    mut rx: mpsc::Receiver<Beat>,
    actor: mpsc::Sender<Msg>,
    cancel: CancellationToken,
) {
    let mut buf: Vec<Beat> = Vec::new();
    // A batch whose relay failed is sent once more with the next one (a leader change or a
    // connection being set up costs no heartbeat); a batch that fails twice is dropped.
    let mut retry: Vec<Beat> = Vec::new();
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
        if buf.is_empty() && retry.is_empty() {
            continue;
        }
        let retried = retry.len();
        // Older beats first: the leader keeps the last beat it reads for a component.
        let mut batch = std::mem::take(&mut retry);
        batch.append(&mut buf);
        let n = batch.len();
        match relay(&node, batch).await {
            Ok(()) => {}
            Err(Relay::Leading(beats)) => {
                // This node leads now: its own actor records the beats.
                if actor.try_send(Msg::Beats(beats)).is_err() {
                    metrics::counter!("flowctl_liveness_relay_dropped_total").increment(n as u64);
                }
            }
            Err(Relay::Failed(e, mut beats)) => {
                metrics::counter!("flowctl_liveness_relay_dropped_total").increment(retried as u64);
                tracing::debug!(error = %e, n, "heartbeat relay failed");
                // Only the part not yet retried gets another try, within one batch's bound.
                retry = beats.split_off(retried.min(beats.len()));
                if retry.len() > RELAY_BATCH {
                    let over = retry.len() - RELAY_BATCH;
                    retry.drain(..over);
                    metrics::counter!("flowctl_liveness_relay_dropped_total")
                        .increment(over as u64);
                }
            }
        }
    }
}

/// Why a relay did not reach the leader, with the beats back for the caller to place.
enum Relay {
    /// This node is the leader now.
    Leading(Vec<Beat>),
    Failed(String, Vec<Beat>),
}

async fn relay(node: &RaftNode, beats: Vec<Beat>) -> Result<(), Relay> {
    let Some((leader, addr)) = node.leader_peer() else {
        return Err(Relay::Failed("no leader known".into(), beats));
    };
    if leader == node.id() {
        return Err(Relay::Leading(beats));
    }
    let ch = match node.peers().channel(&addr) {
        Ok(ch) => ch,
        Err(e) => return Err(Relay::Failed(e, beats)),
    };
    let mut req = tonic::Request::new(ipb::HeartbeatBatch {
        beats: beats
            .iter()
            .map(|b| ipb::Beat {
                id: b.id.0.clone(),
                metrics: b.metrics.clone().into_iter().collect(),
                status: b.status,
            })
            .collect(),
    });
    req.set_timeout(Duration::from_secs(2));
    LivenessServiceClient::new(ch)
        .relay_heartbeats(req)
        .await
        .map(|_| ())
        .map_err(|s| Relay::Failed(s.message().to_owned(), beats))
}

/// The heartbeats of a relayed batch, if the batch is within [`MAX_RELAYED_BEATS`] and every
/// heartbeat within the bounds of [`Beat::check`]. Anyone who reaches the internal port can
/// send a batch, so it is checked whole before any of it is recorded.
fn relayed_beats(batch: ipb::HeartbeatBatch) -> Result<Vec<Beat>, String> {
    if batch.beats.len() > MAX_RELAYED_BEATS {
        return Err(format!(
            "beats: {} heartbeats in one batch, more than {MAX_RELAYED_BEATS}",
            batch.beats.len()
        ));
    }
    let beats: Vec<Beat> = batch
        .beats
        .into_iter()
        .map(|b| Beat {
            id: ComponentId(b.id),
            metrics: b.metrics.into_iter().collect(),
            status: b.status,
        })
        .collect();
    beats.iter().try_for_each(Beat::check)?;
    Ok(beats)
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
        let beats = relayed_beats(req.into_inner()).map_err(ServiceError::BadArgument)?;
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
                awaiting_heartbeat: false,
            },
        )
    }

    fn wire_beat(id: &str, metrics: usize, key_bytes: usize, value_bytes: usize) -> ipb::Beat {
        ipb::Beat {
            id: id.into(),
            metrics: (0..metrics)
                .map(|i| {
                    let key = format!("{i:0>key_bytes$}");
                    (key, "7".repeat(value_bytes))
                })
                .collect(),
            status: 0,
        }
    }

    fn batch(beats: Vec<ipb::Beat>) -> ipb::HeartbeatBatch {
        ipb::HeartbeatBatch { beats }
    }

    #[test]
    fn a_relayed_batch_within_the_bounds_is_accepted_whole() {
        let beats = (0..MAX_RELAYED_BEATS)
            .map(|i| wire_beat(&format!("c-{i}"), 1, 8, 4))
            .collect();
        assert_eq!(
            relayed_beats(batch(beats)).unwrap().len(),
            MAX_RELAYED_BEATS
        );
        let edge = wire_beat(
            "a",
            MAX_BEAT_METRICS,
            MAX_METRIC_KEY_BYTES,
            MAX_METRIC_VALUE_BYTES,
        );
        let beats = relayed_beats(batch(vec![edge])).unwrap();
        assert_eq!(beats[0].metrics.len(), MAX_BEAT_METRICS);
    }

    #[test]
    fn a_relayed_batch_beyond_the_bounds_is_refused_whole() {
        let too_many = (0..=MAX_RELAYED_BEATS)
            .map(|i| wire_beat(&format!("c-{i}"), 0, 0, 0))
            .collect();
        let ok = || wire_beat("ok", 1, 8, 4);
        for (b, says) in [
            (batch(too_many), "heartbeats in one batch"),
            (
                batch(vec![ok(), wire_beat("a", MAX_BEAT_METRICS + 1, 8, 4)]),
                "metrics, more than",
            ),
            (
                batch(vec![ok(), wire_beat("a", 1, MAX_METRIC_KEY_BYTES + 1, 4)]),
                "metric name",
            ),
            (
                batch(vec![ok(), wire_beat("a", 1, 8, MAX_METRIC_VALUE_BYTES + 1)]),
                "value",
            ),
        ] {
            let err = relayed_beats(b).unwrap_err();
            assert!(err.contains(says), "{err}");
            let status = tonic::Status::from(ServiceError::BadArgument(err));
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
    }

    fn beat_at(mono_ms: u64) -> LiveEntry {
        LiveEntry {
            seen_mono_ms: mono_ms,
            ..Default::default()
        }
    }

    fn a() -> ComponentId {
        ComponentId("a".into())
    }

    #[test]
    fn healthy_component_goes_down_only_after_the_ttl() {
        let reg: BTreeMap<_, _> = [rec("a", true, 0)].into();
        let mut seen = HashMap::new();
        let live: HashMap<_, _> = [(a(), beat_at(1_000))].into();
        assert!(decide(&reg, &live, &mut seen, 0, 0, 30_000, None).is_empty());
        assert!(decide(&reg, &live, &mut seen, 31_000, 0, 30_000, None).is_empty());
        assert_eq!(
            decide(&reg, &live, &mut seen, 31_001, 0, 30_000, None),
            vec![Transition::Down(a())]
        );
    }

    #[test]
    fn a_new_leader_grants_a_full_ttl() {
        let reg: BTreeMap<_, _> = [rec("a", true, 0)].into();
        let none = HashMap::new();
        let mut seen = HashMap::new();
        // Became leader at 100 s with no heartbeat history: nothing is due until 130 s.
        assert!(decide(&reg, &none, &mut seen, 100_000, 100_000, 30_000, None).is_empty());
        assert!(decide(&reg, &none, &mut seen, 129_000, 100_000, 30_000, None).is_empty());
        assert_eq!(
            decide(&reg, &none, &mut seen, 130_001, 100_000, 30_000, None).len(),
            1
        );
    }

    #[test]
    fn a_heartbeat_after_going_down_brings_it_back() {
        let reg: BTreeMap<_, _> = [rec("a", false, 50_000)].into();
        let mut seen = HashMap::new();
        // The leader sees it down at 50 s (monotonic); a heartbeat from before does not count.
        let before: HashMap<_, _> = [(a(), beat_at(40_000))].into();
        assert!(decide(&reg, &before, &mut seen, 50_000, 0, 30_000, None).is_empty());
        let after: HashMap<_, _> = [(a(), beat_at(55_000))].into();
        assert_eq!(
            decide(&reg, &after, &mut seen, 60_000, 0, 30_000, None),
            vec![Transition::Up(a())]
        );
    }

    #[test]
    fn the_first_heartbeat_after_a_registration_is_confirmed_once() {
        let (id, mut r) = rec("a", true, 50_000);
        r.awaiting_heartbeat = true;
        let mut reg: BTreeMap<_, _> = [(id, r)].into();
        let mut seen = HashMap::new();
        // Seen registered at 50 s; the last heartbeat is older (a previous copy's).
        let old: HashMap<_, _> = [(a(), beat_at(49_000))].into();
        assert!(decide(&reg, &old, &mut seen, 50_000, 0, 30_000, None).is_empty());
        assert!(decide(&reg, &old, &mut seen, 51_000, 0, 30_000, None).is_empty());
        let new: HashMap<_, _> = [(a(), beat_at(51_500))].into();
        assert_eq!(
            decide(&reg, &new, &mut seen, 52_000, 0, 30_000, None),
            vec![Transition::Up(a())]
        );
        // Once committed, nothing more is due while heartbeats go on.
        reg.values_mut().for_each(|r| r.awaiting_heartbeat = false);
        let later: HashMap<_, _> = [(a(), beat_at(60_000))].into();
        assert!(decide(&reg, &later, &mut seen, 61_000, 0, 30_000, None).is_empty());
    }

    #[test]
    fn a_registration_never_heard_from_goes_down_after_the_ttl() {
        let (id, mut r) = rec("a", true, 50_000);
        r.awaiting_heartbeat = true;
        let reg: BTreeMap<_, _> = [(id, r)].into();
        let mut seen = HashMap::new();
        let none = HashMap::new();
        assert!(decide(&reg, &none, &mut seen, 50_000, 0, 30_000, None).is_empty());
        assert_eq!(
            decide(&reg, &none, &mut seen, 80_001, 0, 30_000, None),
            vec![Transition::Down(a())]
        );
    }

    #[test]
    fn a_heartbeat_while_the_down_transition_commits_brings_it_back() {
        let mut seen = HashMap::new();
        let silent: HashMap<_, _> = [(a(), beat_at(0))].into();
        let up: BTreeMap<_, _> = [rec("a", true, 0)].into();
        assert!(decide(&up, &silent, &mut seen, 0, 0, 30_000, None).is_empty());
        assert_eq!(
            decide(&up, &silent, &mut seen, 30_001, 0, 30_000, None),
            vec![Transition::Down(a())]
        );
        // A heartbeat at 30.5 s, before the next sweep sees the committed change at 31 s.
        let beat: HashMap<_, _> = [(a(), beat_at(30_500))].into();
        let down: BTreeMap<_, _> = [rec("a", false, 30_001)].into();
        assert_eq!(
            decide(&down, &beat, &mut seen, 31_000, 0, 30_000, None),
            vec![Transition::Up(a())]
        );
    }

    #[test]
    fn silent_components_expire() {
        let reg: BTreeMap<_, _> = [rec("a", false, 0)].into();
        let none = HashMap::new();
        let mut seen = HashMap::new();
        assert!(decide(&reg, &none, &mut seen, 0, 0, 30_000, Some(2_000)).is_empty());
        assert!(decide(&reg, &none, &mut seen, 1_000, 0, 30_000, Some(2_000)).is_empty());
        assert_eq!(
            decide(&reg, &none, &mut seen, 2_001, 0, 30_000, Some(2_000)),
            vec![Transition::Expire(a())]
        );
    }

    #[test]
    fn a_wall_clock_step_decides_nothing() {
        // The replicated stamps say the component changed status "a day ago" or "in a day":
        // decisions do not read them as times, only as a sign that the status changed.
        let mut seen = HashMap::new();
        let live: HashMap<_, _> = [(a(), beat_at(5_000))].into();
        for stamp in [0, 86_400_000 * 365, u64::MAX] {
            let reg: BTreeMap<_, _> = [rec("a", true, stamp)].into();
            assert!(
                decide(&reg, &live, &mut seen, 6_000, 0, 30_000, Some(60_000)).is_empty(),
                "stamp {stamp}"
            );
        }
    }

    #[test]
    fn a_status_change_restarts_the_grace() {
        let mut seen = HashMap::new();
        let none = HashMap::new();
        let down: BTreeMap<_, _> = [rec("a", false, 1)].into();
        assert!(decide(&down, &none, &mut seen, 0, 0, 30_000, None).is_empty());
        // Brought back up (a heartbeat then lost): the leader grants a full TTL from when it saw
        // the change, not from the replicated stamp.
        let up: BTreeMap<_, _> = [rec("a", true, 2)].into();
        assert!(decide(&up, &none, &mut seen, 100_000, 0, 30_000, None).is_empty());
        assert!(decide(&up, &none, &mut seen, 130_000, 0, 30_000, None).is_empty());
        assert_eq!(
            decide(&up, &none, &mut seen, 130_001, 0, 30_000, None),
            vec![Transition::Down(a())]
        );
    }
}
