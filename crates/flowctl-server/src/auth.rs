//! Who may call what: the one authorization table ([`rule`]) and the tower layer that enforces
//! it on every gRPC request, and the credentials it accepts.
//!
//! Credentials, all sent as `authorization: Bearer <secret>`:
//! - **the peer secret** (`<data-dir>/peer.token`, or `--peer-token-file`): the nodes' own
//!   credential. Internal RPCs (Raft, forwarding, membership, liveness relays) need it as soon
//!   as the node has one; it also allows everything else (a node proxies logs for its clients);
//! - **named tokens** with a role, kept as SHA-256 hashes in the replicated state
//!   (`flowctl auth token create`), once authentication is on (`--auth`);
//! - **instance tokens**: the supervisor gives each instance `fi1.<component-id>.<mac>`, an
//!   HMAC-SHA256 of the component id under the peer secret, with the `agent` role. Any node
//!   with the peer secret checks one without a replicated record.
//!
//! Wrong or missing credentials give `UNAUTHENTICATED`; a known identity whose role is too
//! small gives `PERMISSION_DENIED`. With `--allow-anonymous-agents`, callers without
//! credentials may use the component APIs (and nothing else), so that the original Go
//! components, which send none, still register.

use flowctl_raft::RaftNode;
use flowctl_state::auth::{Role, TokenRecord};
use hmac::Mac;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tonic::Status;
use tower::{Layer, Service};

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone, with or without credentials (gRPC health, for probes).
    Open,
    /// The peer secret: node-to-node RPCs.
    Peer,
    /// One of these roles (the peer secret allows it too).
    Role(&'static [Role]),
}

const ADMIN: &[Role] = &[Role::Admin];
const OPERATE: &[Role] = &[Role::Admin, Role::Operator];
const READ: &[Role] = &[Role::Admin, Role::Operator, Role::Reader];
const AGENT: &[Role] = &[Role::Admin, Role::Agent];
/// Discovery and status in the component APIs: agents and readers.
const DISCOVER: &[Role] = &[Role::Admin, Role::Operator, Role::Reader, Role::Agent];

/// One method's entry in the table: what it needs, and whether an accepted call is a write
/// that the audit log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub need: Need,
    pub audited: bool,
}

/// A method that reads or streams: not audited.
const fn read(need: Need) -> Rule {
    Rule {
        need,
        audited: false,
    }
}

/// A method that changes the cluster: every accepted call is audited.
const fn write(need: Need) -> Rule {
    Rule {
        need,
        audited: true,
    }
}

/// The authorization table of the public port: every method of every service served there,
/// by its full path, with the role it needs and whether it is audited. The peer port (Raft,
/// forwarding, membership, liveness relays, log proxying) is not in it: everything there needs
/// the peer secret and a member's name ([`Gate::admit_peer`]). Heartbeats and chunk reports are
/// not audited: they are many and change nothing an operator decided. `None` for a path no
/// service has (the router answers `UNIMPLEMENTED`).
pub fn rule(path: &str) -> Option<Rule> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let rule = match (service, method) {
        ("grpc.health.v1.Health", _) => read(Need::Open),
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => {
            read(Need::Role(READ))
        }

        ("flowctl.admin.v1.PipelineService", "ApplyPipeline" | "DeletePipeline") => {
            write(Need::Role(OPERATE))
        }
        ("flowctl.admin.v1.PipelineService", "GetPipeline" | "ListPipelines") => {
            read(Need::Role(READ))
        }
        ("flowctl.admin.v1.ClusterService", "Status" | "Members") => read(Need::Role(READ)),
        ("flowctl.admin.v1.ClusterService", "TransferLeader") => write(Need::Role(OPERATE)),
        ("flowctl.admin.v1.ClusterService", "RemoveMember") => write(Need::Role(ADMIN)),
        ("flowctl.admin.v1.ComponentService", "ListComponents" | "GetComponent") => {
            read(Need::Role(READ))
        }
        ("flowctl.admin.v1.LogService", "Logs") => read(Need::Role(READ)),
        ("flowctl.admin.v1.SchemaService", "Push" | "SetCompatibility" | "DeleteSchema") => {
            write(Need::Role(OPERATE))
        }
        ("flowctl.admin.v1.SchemaService", "ListSubjects" | "GetSchema" | "GetCompatibility") => {
            read(Need::Role(READ))
        }
        ("flowctl.admin.v1.DlqService", "List" | "Show") => read(Need::Role(READ)),
        ("flowctl.admin.v1.DlqService", "Replay" | "Discard") => write(Need::Role(OPERATE)),
        ("flowctl.admin.v1.ReplayService", "Create" | "Control") => write(Need::Role(OPERATE)),
        ("flowctl.admin.v1.ReplayService", "List" | "Get" | "Chunks") => read(Need::Role(READ)),
        ("flowctl.admin.v1.ReplayService", "WatchChunks" | "ReportChunk") => {
            read(Need::Role(AGENT))
        }
        ("flowctl.admin.v1.AuthService", "CreateToken" | "RevokeToken" | "SetAuth") => {
            write(Need::Role(ADMIN))
        }
        ("flowctl.admin.v1.AuthService", "ListTokens") => read(Need::Role(ADMIN)),
        ("flowctl.admin.v1.AuthService", "WhoAmI") => read(Need::Role(DISCOVER)),
        ("flowctl.admin.v1.AuditService", "List") => read(Need::Role(ADMIN)),

        ("flowctl.ControlPlane", "Register") => write(Need::Role(AGENT)),
        ("flowctl.ControlPlane", "Heartbeat") => read(Need::Role(AGENT)),
        ("flowctl.ControlPlane", "GetServiceStatus" | "ListServices") => read(Need::Role(DISCOVER)),
        ("flowctl.v1.ControlPlaneService", "RegisterComponent" | "UnregisterComponent") => {
            write(Need::Role(AGENT))
        }
        ("flowctl.v1.ControlPlaneService", "Heartbeat") => read(Need::Role(AGENT)),
        (
            "flowctl.v1.ControlPlaneService",
            "DiscoverComponents" | "GetComponentStatus" | "ListComponents",
        ) => read(Need::Role(DISCOVER)),
        _ => return None,
    };
    Some(rule)
}

/// Who a request comes from, as the layer established it. Handlers find it in the request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials, where that is allowed (auth off, open methods, anonymous agents).
    Anonymous,
    /// Another node (the peer secret).
    Peer,
    /// A named token.
    Token { name: String, role: Role },
    /// An instance's agent token, for this component id.
    Instance { component: String },
    /// A client certificate from the trusted CA whose CN (or a DNS name) names a role.
    Certificate { subject: String, role: Role },
}

impl Identity {
    pub fn name(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".into(),
            Identity::Peer => "peer".into(),
            Identity::Token { name, .. } => name.clone(),
            Identity::Instance { component } => format!("component:{component}"),
            Identity::Certificate { subject, .. } => format!("cert:{subject}"),
        }
    }

    /// The role it acts with; `None` for anonymous and peer callers.
    pub fn role(&self) -> Option<Role> {
        match self {
            Identity::Token { role, .. } => Some(*role),
            Identity::Instance { .. } => Some(Role::Agent),
            Identity::Certificate { role, .. } => Some(*role),
            Identity::Anonymous | Identity::Peer => None,
        }
    }
}

/// An instance token speaks for its own component id only: `id` must be that id. Other
/// callers are not limited here.
pub fn check_component_scope<T>(req: &tonic::Request<T>, id: &str) -> Result<(), Status> {
    match req.extensions().get::<Identity>() {
        Some(Identity::Instance { component }) if component != id => {
            Err(Status::permission_denied(format!(
                "the instance token of component {component:?} may not act for component {id:?}"
            )))
        }
        _ => Ok(()),
    }
}

/// A secret with a Debug that never prints it.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl Secret {
    pub fn new(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() < 32 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a secret must be at least 32 printable ASCII characters".into());
        }
        Ok(Secret(s.into()))
    }

    /// A new random secret: `flowctl_` and 64 hex digits (256 bits).
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Secret(format!("flowctl_{}", hex(&bytes)).into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret file, trimmed.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Secret::new(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the secret to a new file readable by its owner only.
    pub fn write_new(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        writeln!(f, "{}", self.0)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The lowercase hex SHA-256 of a token's secret: what the replicated state keeps.
pub fn token_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Equal in time independent of where `a` and `b` differ (both are fixed-length digests).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const INSTANCE_TOKEN_PREFIX: &str = "fi1.";

type HmacSha256 = hmac::Hmac<Sha256>;

fn instance_mac(peer: &Secret, component: &str) -> HmacSha256 {
    // Any key length is valid for HMAC.
    let mut mac = match HmacSha256::new_from_slice(peer.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(b"flowctl-instance:");
    mac.update(component.as_bytes());
    mac
}

/// The agent token the supervisor gives the instance with this component id.
pub fn instance_token(peer: &Secret, component: &str) -> String {
    let tag = instance_mac(peer, component).finalize().into_bytes();
    format!("{INSTANCE_TOKEN_PREFIX}{component}.{}", hex(&tag))
}

/// The component id an instance token vouches for, if it is genuine.
fn check_instance_token(peer: &Secret, token: &str) -> Option<String> {
    let rest = token.strip_prefix(INSTANCE_TOKEN_PREFIX)?;
    let (component, tag) = rest.rsplit_once('.')?;
    if component.is_empty() || tag.len() != 64 {
        return None;
    }
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(tag.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    instance_mac(peer, component)
        .verify_slice(&tag)
        .ok()
        .map(|()| component.to_owned())
}

/// Token hashes → records, rebuilt when the replicated auth state changes.
#[derive(Default)]
struct TokenCache {
    revision: Option<u64>,
    enabled: bool,
    by_hash: HashMap<String, TokenRecord>,
}

/// The checks of one node: its peer secret, its settings, and a cache of the token table.
#[derive(Clone)]
pub struct Gate {
    node: RaftNode,
    peer: Option<Secret>,
    /// Peer TLS is on: peer calls must come with a certificate naming the sender.
    peer_certificates: bool,
    allow_anonymous_agents: bool,
    cache: Arc<Mutex<TokenCache>>,
}

impl Gate {
    pub fn new(node: RaftNode, peer: Option<Secret>, allow_anonymous_agents: bool) -> Self {
        Gate {
            node,
            peer,
            peer_certificates: false,
            allow_anonymous_agents,
            cache: Arc::default(),
        }
    }

    /// Peer calls must come with a verified certificate that names the sender (peer TLS).
    pub fn with_peer_certificates(mut self, on: bool) -> Self {
        self.peer_certificates = on;
        self
    }

    /// Whether this node holds the cluster's peer secret.
    pub fn has_peer_secret(&self) -> bool {
        self.peer.is_some()
    }

    /// Whether the cluster requires credentials (as this node last applied it).
    pub fn enabled(&self) -> bool {
        self.refresh();
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).enabled
    }

    fn refresh(&self) {
        let revision = self.node.read_stale(|s| s.auth.revision).0;
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.revision == Some(revision) {
            return;
        }
        let (enabled, tokens) = self
            .node
            .read_stale(|s| {
                (
                    s.auth.enabled,
                    s.auth.tokens.values().cloned().collect::<Vec<_>>(),
                )
            })
            .0;
        c.enabled = enabled;
        c.by_hash = tokens.into_iter().map(|t| (t.hash.clone(), t)).collect();
        c.revision = Some(revision);
    }

    /// Who the credentials in `headers` belong to, if they may call a method that needs
    /// `need`; otherwise the status to answer with.
    /// The peer port's second check, after the peer secret: the sender names itself
    /// (`x-flowctl-node-id`) and its cluster (`x-flowctl-cluster-id`), and
    /// - a sender of another cluster is refused;
    /// - a removed node is refused, always (it cannot disrupt elections or write);
    /// - anything but Raft replication and `Join` needs a current member. Replication from a
    ///   node this one does not know yet is let through: a node that was cut off while the
    ///   membership changed must still hear from a leader added meanwhile, and a joining node
    ///   knows no member until the leader replicates to it.
    ///
    /// With peer TLS, the connection's certificate (verified against the peer CA by the
    /// handshake) must also name the sender's recorded peer host, when the sender is a member.
    pub fn admit_peer(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        cert: Option<&flowctl_tls::CertIdentity>,
    ) -> Result<(), Status> {
        use flowctl_proto::auth::{PEER_CLUSTER_ID, PEER_NODE_ID};
        let method = path
            .strip_prefix("/flowctl.internal.v1.RaftService/")
            .unwrap_or("");
        let replication = matches!(method, "AppendEntries" | "Vote" | "InstallSnapshot");
        let join = method == "Join";
        let from = headers
            .get(PEER_NODE_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|id| *id != 0)
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "node-to-node calls must name their sender's node id ({PEER_NODE_ID})"
                ))
            })?;
        let theirs = headers
            .get(PEER_CLUSTER_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mine = self.node.cluster_id();
        if !mine.is_empty() {
            if !theirs.is_empty() && theirs != mine {
                return Err(Status::permission_denied(format!(
                    "node {from} belongs to cluster {theirs}; this is cluster {mine}"
                )));
            }
            if theirs.is_empty() && !(join || replication) {
                return Err(Status::permission_denied(format!(
                    "node {from} names no cluster; only Join and Raft replication are taken from a node that has not joined"
                )));
            }
        }
        if self.node.was_removed(from) {
            return Err(Status::permission_denied(format!(
                "node {from} was removed from this cluster"
            )));
        }
        if !(join || replication || self.node.is_member(from)) {
            return Err(Status::permission_denied(format!(
                "node {from} is not a member of this cluster"
            )));
        }
        if self.peer_certificates {
            let cert = cert.ok_or_else(|| {
                Status::unauthenticated("the peer port needs a certificate from the peer CA")
            })?;
            if let Some(addr) = self.node.peer_addr_of(from) {
                let host = flowctl_raft::split_host_port(&addr)
                    .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                    .unwrap_or_default();
                let named = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => cert.ip_addresses.contains(&ip),
                    Err(_) => cert.dns_names.iter().any(|d| d.eq_ignore_ascii_case(host)),
                };
                if !named {
                    return Err(Status::permission_denied(format!(
                        "node {from}'s certificate does not name its peer address {addr}"
                    )));
                }
            }
        }
        // A joining node knows no cluster id until its Join answers, which is only after the
        // leader has made it a voter; meanwhile it already serves clients, and the writes it
        // forwards would name no cluster, which the leader refuses. The leader's replication
        // reaches it first (a learner catches up before it is promoted), so it takes the id
        // from there: in memory only, and only after the peer secret and certificate checks
        // above. The Join answer then sets the id for good and persists it.
        if mine.is_empty()
            && !theirs.is_empty()
            && matches!(method, "AppendEntries" | "InstallSnapshot")
        {
            tracing::info!(
                cluster_id = theirs,
                leader = from,
                "learned the cluster id from the leader's replication"
            );
            self.node.set_cluster_id(theirs);
        }
        Ok(())
    }

    pub fn authorize(
        &self,
        need: Need,
        headers: &http::HeaderMap,
        cert: Option<&flowctl_tls::CertIdentity>,
    ) -> Result<Identity, Status> {
        let token = bearer(headers)?;
        if let (Some(t), Some(peer)) = (token, &self.peer) {
            if same(
                &Sha256::digest(t.as_bytes()),
                &Sha256::digest(peer.expose().as_bytes()),
            ) {
                return Ok(Identity::Peer);
            }
        }
        match need {
            Need::Open => return Ok(Identity::Anonymous),
            // Without a peer secret the node runs open, as before authentication existed.
            Need::Peer if self.peer.is_none() => return Ok(Identity::Anonymous),
            Need::Peer => {
                return Err(Status::unauthenticated(
                    "node-to-node RPCs need this cluster's peer secret",
                ))
            }
            Need::Role(_) => {}
        }
        self.refresh();
        let roles = match need {
            Need::Role(r) => r,
            Need::Open | Need::Peer => &[][..],
        };
        let (enabled, found) = {
            let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let found = token.and_then(|t| c.by_hash.get(&token_hash(t)).cloned());
            (c.enabled, found)
        };
        if !enabled {
            return Ok(Identity::Anonymous);
        }
        let identity = match (token, found) {
            // A verified client certificate speaks when no token does.
            (None, _) => match cert.and_then(cert_role) {
                Some((subject, role)) => Identity::Certificate { subject, role },
                None if self.allow_anonymous_agents && roles.contains(&Role::Agent) => {
                    return Ok(Identity::Anonymous)
                }
                None => {
                    return Err(Status::unauthenticated(
                        "this cluster requires a token (authentication is on)",
                    ))
                }
            },
            (Some(_), Some(rec)) => {
                if rec.expires_ms.is_some_and(|e| crate::clock::now_ms() >= e) {
                    return Err(Status::unauthenticated(format!(
                        "token {:?} has expired",
                        rec.name
                    )));
                }
                Identity::Token {
                    name: rec.name,
                    role: rec.role,
                }
            }
            (Some(t), None) => match self.peer.as_ref().and_then(|p| check_instance_token(p, t)) {
                Some(component) => Identity::Instance { component },
                None => {
                    return Err(Status::unauthenticated(
                        "the token is not valid here (unknown, revoked or malformed)",
                    ))
                }
            },
        };
        match identity.role() {
            Some(r) if roles.contains(&r) => Ok(identity),
            _ => Err(Status::permission_denied(format!(
                "{} (role {}) may not call this; it needs {}",
                identity.name(),
                identity.role().map(Role::as_str).unwrap_or("none"),
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))),
        }
    }
}

/// The role a client certificate names: its CN, else its first DNS name, of the form
/// `flowctl-<role>`; with the name it was found under.
fn cert_role(cert: &flowctl_tls::CertIdentity) -> Option<(String, Role)> {
    cert.common_name
        .iter()
        .chain(&cert.dns_names)
        .find_map(|n| Some((n.clone(), Role::parse(n.strip_prefix("flowctl-")?).ok()?)))
}

/// The names in the verified client certificate of the connection `ext` came on, if any.
fn connection_cert(ext: &http::Extensions) -> Option<flowctl_tls::CertIdentity> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let info = ext.get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    flowctl_tls::cert_identity(certs.first()?.as_ref())
}

/// The bearer token of a request, if it has an `authorization` header.
fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, Status> {
    let Some(v) = headers.get(flowctl_proto::auth::AUTHORIZATION) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.strip_prefix("Bearer "))
        .map(|t| Some(t.trim()))
        .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))
}

/// The listener a layer guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The public API: the table in [`rule`].
    Public,
    /// Node-to-node: the peer secret, and a sender that names a member of this cluster.
    Peer,
}

/// The tower layer that runs [`Gate::authorize`] before any handler, and hands every accepted
/// write to the audit log.
#[derive(Clone)]
pub struct AuthLayer {
    pub gate: Gate,
    pub audit: crate::audit::AuditHandle,
    pub port: Port,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthMiddleware<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware {
            inner,
            gate: self.gate.clone(),
            audit: self.audit.clone(),
            port: self.port,
        }
    }
}

#[derive(Clone)]
pub struct AuthMiddleware<S> {
    inner: S,
    gate: Gate,
    audit: crate::audit::AuditHandle,
    port: Port,
}

impl<S, B, RB> Service<http::Request<B>> for AuthMiddleware<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let (rule, checked) = match self.port {
            Port::Public => {
                let rule = rule(req.uri().path());
                // Parsed only when a certificate could speak: no token was sent.
                let cert = if req
                    .headers()
                    .contains_key(flowctl_proto::auth::AUTHORIZATION)
                {
                    None
                } else {
                    connection_cert(req.extensions())
                };
                let checked = match rule {
                    Some(r) => self.gate.authorize(r.need, req.headers(), cert.as_ref()),
                    // No such method here: the router answers UNIMPLEMENTED.
                    None => Ok(Identity::Anonymous),
                };
                (rule, checked)
            }
            Port::Peer => {
                // Parsed only when peer TLS asks for the sender's name.
                let cert = if self.gate.peer_certificates {
                    connection_cert(req.extensions())
                } else {
                    None
                };
                let checked = self
                    .gate
                    .authorize(Need::Peer, req.headers(), None)
                    .and_then(|id| {
                        self.gate
                            .admit_peer(req.uri().path(), req.headers(), cert.as_ref())?;
                        Ok(id)
                    });
                (None, checked)
            }
        };
        // A client's request id names the writes of this request, scoped by who sent it (see
        // `flowctl_raft::with_request_id`); the peer port's writes carry their ids inside.
        let request = match (&checked, self.port) {
            (Ok(identity), Port::Public) => match request_scope(req.headers(), identity) {
                Ok(r) => r,
                Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            },
            _ => None,
        };
        match checked {
            Ok(identity) => {
                let audit = rule.is_some_and(|r| r.audited).then(|| {
                    (
                        self.audit.clone(),
                        identity.name(),
                        req.uri().path().to_owned(),
                    )
                });
                req.extensions_mut().insert(identity);
                let call = self.inner.call(req);
                Box::pin(async move {
                    let res = match request {
                        Some(base) => flowctl_raft::with_request_id(base, call).await,
                        None => call.await,
                    };
                    // A unary success carries its status in the trailers; an error, in the
                    // headers.
                    if let (Some((log, who, method)), Ok(r)) = (audit, &res) {
                        let ok = r
                            .headers()
                            .get("grpc-status")
                            .is_none_or(|v| v.as_bytes() == b"0");
                        if ok {
                            let what = r
                                .extensions()
                                .get::<crate::audit::AuditResource>()
                                .map(|x| x.0.as_str())
                                .unwrap_or_default();
                            log.record(&who, &method, what);
                        }
                    }
                    res
                })
            }
            Err(status) => {
                metrics::counter!("flowctl_auth_refused_total", "code" => match status.code() {
                    tonic::Code::PermissionDenied => "PERMISSION_DENIED",
                    _ => "UNAUTHENTICATED",
                })
                .increment(1);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Longest part of a request scope that names the caller.
const MAX_SCOPE_NAME: usize = 200;

/// The request scope of a call that sent `x-flowctl-request-id`: the caller's name and the
/// id. An id that is not 1-64 letters, digits, `-` or `_` is refused in one line.
fn request_scope(
    headers: &http::HeaderMap,
    identity: &Identity,
) -> Result<Option<String>, tonic::Status> {
    use flowctl_proto::auth::{valid_request_id, MAX_REQUEST_ID_LEN, REQUEST_ID};
    let Some(v) = headers.get(REQUEST_ID) else {
        return Ok(None);
    };
    let id = v
        .to_str()
        .ok()
        .filter(|id| valid_request_id(id))
        .ok_or_else(|| {
            tonic::Status::invalid_argument(format!(
                "{REQUEST_ID}: 1 to {MAX_REQUEST_ID_LEN} ASCII letters, digits, '-' or '_'"
            ))
        })?;
    let mut name = identity.name();
    if name.len() > MAX_SCOPE_NAME {
        let mut cut = MAX_SCOPE_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    // Printable, no spaces: the state machine's rule for request ids.
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    Ok(Some(format!("{name}/{id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_scoped_by_the_caller_and_bad_ones_refused() {
        let who = Identity::Token {
            name: "ci".into(),
            role: Role::Operator,
        };
        let mut h = http::HeaderMap::new();
        assert_eq!(request_scope(&h, &who).unwrap(), None);
        h.insert(flowctl_proto::auth::REQUEST_ID, "r-1_a".parse().unwrap());
        assert_eq!(
            request_scope(&h, &who).unwrap().as_deref(),
            Some("ci/r-1_a")
        );
        let cert = Identity::Certificate {
            subject: format!("a b{}", "x".repeat(300)),
            role: Role::Admin,
        };
        let scope = request_scope(&h, &cert).unwrap().unwrap();
        assert!(
            scope.starts_with("cert:a_b") && scope.len() <= MAX_SCOPE_NAME + 6,
            "{scope}"
        );
        for bad in ["a/b", "a b", &"x".repeat(65)] {
            h.insert(flowctl_proto::auth::REQUEST_ID, bad.parse().unwrap());
            let e = request_scope(&h, &who).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn every_method_of_every_service_is_in_the_table() {
        let served: Vec<&str> = crate::grpc_metrics::served_methods().collect();
        assert!(served.contains(&"/flowctl.admin.v1.AuditService/List"));
        // The internal services are served on the peer port only, where everything needs
        // the peer secret: they are not in the public table.
        let missing: Vec<&&str> = served
            .iter()
            .filter(|p| !p.starts_with("/flowctl.internal.") && rule(p).is_none())
            .collect();
        assert_eq!(rule("/flowctl.internal.v1.RaftService/AppendEntries"), None);
        assert!(missing.is_empty(), "methods without an entry: {missing:?}");
        assert_eq!(rule("/flowctl.admin.v1.PipelineService/NoSuch"), None);
        assert!(rule("/flowctl.admin.v1.PipelineService/ApplyPipeline").is_some_and(|r| r.audited));
        assert!(!rule("/flowctl.v1.ControlPlaneService/Heartbeat").is_some_and(|r| r.audited));
    }

    #[test]
    fn instance_tokens_vouch_only_for_their_component_and_secret() {
        let peer = Secret::generate();
        let t = instance_token(&peer, "ttp-processor-1");
        assert_eq!(
            check_instance_token(&peer, &t).as_deref(),
            Some("ttp-processor-1")
        );
        let forged = t.replace("ttp-processor-1", "ttp-processor-2");
        assert_eq!(check_instance_token(&peer, &forged), None);
        assert_eq!(check_instance_token(&Secret::generate(), &t), None);
        assert_eq!(check_instance_token(&peer, "fi1.x.zz"), None);
        assert_eq!(check_instance_token(&peer, "not-a-token"), None);
    }

    #[test]
    fn secrets_are_long_and_never_printed() {
        let s = Secret::generate();
        assert!(s.expose().starts_with("flowctl_") && s.expose().len() == 72);
        assert_eq!(format!("{s:?}"), "<secret>");
        assert!(Secret::new("short").is_err());
        assert_eq!(token_hash("x").len(), 64);
    }
}
