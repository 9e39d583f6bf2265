//! Tokens: the service functions (create, list, revoke) and the thin `AuthService` handlers.
//! Who may call them is decided by the authorization table in [`crate::auth`].

use crate::auth::{token_hash, Gate, Identity, Secret};
use crate::clock::{now_ms, ts};
use crate::errors::ServiceError;
use flowctl_proto::admin::v1 as pb;
use flowctl_raft::RaftNode;
use flowctl_state::auth::{CreateToken, RevokeToken, Role, TokenRecord};
use flowctl_state::{Command, Outcome};
use tonic::{Request, Response, Status};

/// The longest token lifetime accepted: ten years.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Creates a named token with a role; returns its record and its secret (shown once).
pub async fn create(
    node: &RaftNode,
    name: &str,
    role: &str,
    ttl_seconds: u64,
) -> Result<(TokenRecord, Secret), ServiceError> {
    flowctl_spec::check_name(name)
        .map_err(|m| ServiceError::BadArgument(format!("token name: {m}")))?;
    let role = Role::parse(role).map_err(|m| ServiceError::BadArgument(format!("role: {m}")))?;
    if ttl_seconds > MAX_TTL_SECONDS {
        return Err(ServiceError::BadArgument(format!(
            "ttl_seconds: at most {MAX_TTL_SECONDS} (ten years)"
        )));
    }
    let secret = Secret::generate();
    let created_ms = now_ms();
    let token = TokenRecord {
        name: name.to_owned(),
        role,
        hash: token_hash(secret.expose()),
        created_ms,
        expires_ms: (ttl_seconds > 0).then(|| created_ms + ttl_seconds * 1000),
    };
    let applied = node
        .propose(Command::CreateToken(CreateToken {
            token: token.clone(),
        }))
        .await?;
    match applied.outcome {
        Outcome::TokenCreated { .. } => Ok((token, secret)),
        Outcome::Rejected(r) => Err(r.into()),
        other => Err(ServiceError::Unexpected(format!("{other:?}"))),
    }
}

pub async fn revoke(node: &RaftNode, name: &str) -> Result<u64, ServiceError> {
    let applied = node
        .propose(Command::RevokeToken(RevokeToken {
            name: name.to_owned(),
        }))
        .await?;
    match applied.outcome {
        Outcome::TokenRevoked { .. } => Ok(applied.log_index),
        Outcome::Rejected(r) => Err(r.into()),
        other => Err(ServiceError::Unexpected(format!("{other:?}"))),
    }
}

/// Turns authentication on or off. Turning it on needs this node to hold the cluster's peer
/// secret (the nodes' credential, and the key of the instances' tokens), and makes sure an
/// unexpired admin token exists first, creating one (returned once) if none does, so that
/// nobody is locked out.
pub async fn set_auth(
    node: &RaftNode,
    gate: &Gate,
    enabled: bool,
) -> Result<(u64, Option<(TokenRecord, Secret)>), ServiceError> {
    let mut created = None;
    if enabled {
        if !gate.has_peer_secret() {
            return Err(ServiceError::FailedPrecondition(
                "turning authentication on needs the cluster's peer secret on every node: restart each node with --peer-token-file (the same file everywhere) first".into(),
            ));
        }
        let now = now_ms();
        let (has_admin, _) = node
            .read_linearizable(|s| {
                s.auth
                    .tokens
                    .values()
                    .any(|t| t.role == Role::Admin && t.expires_ms.is_none_or(|e| e > now))
            })
            .await?;
        if !has_admin {
            let name = format!("admin-{}", now / 1000);
            created = Some(create(node, &name, "admin", 0).await?);
        }
    }
    let applied = node
        .propose(Command::SetAuth(flowctl_state::auth::SetAuth { enabled }))
        .await?;
    match applied.outcome {
        Outcome::AuthSet { .. } => Ok((applied.log_index, created)),
        Outcome::Rejected(r) => Err(r.into()),
        other => Err(ServiceError::Unexpected(format!("{other:?}"))),
    }
}

fn info(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        name: t.name.clone(),
        role: t.role.as_str().to_owned(),
        created_at: ts(t.created_ms),
        expires_at: t.expires_ms.and_then(ts),
    }
}

pub struct AuthApi {
    pub node: RaftNode,
    pub gate: Gate,
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let r = req.into_inner();
        let (token, secret) = create(&self.node, &r.name, &r.role, r.ttl_seconds).await?;
        tracing::info!(token = %token.name, role = token.role.as_str(), "token created");
        let what = format!("token/{}", token.name);
        let resp = Response::new(pb::CreateTokenResponse {
            token: Some(info(&token)),
            secret: secret.expose().to_owned(),
        });
        Ok(crate::audit::resource(resp, what))
    }

    async fn list_tokens(
        &self,
        _req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let ((enabled, tokens), _) = self
            .node
            .read_linearizable(|s| {
                (
                    s.auth.enabled,
                    s.auth.tokens.values().map(info).collect::<Vec<_>>(),
                )
            })
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens,
            auth_enabled: enabled,
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let name = req.into_inner().name;
        let log_index = revoke(&self.node, &name).await?;
        tracing::info!(token = %name, "token revoked");
        let resp = Response::new(pb::RevokeTokenResponse { log_index });
        Ok(crate::audit::resource(resp, format!("token/{name}")))
    }

    async fn set_auth(
        &self,
        req: Request<pb::SetAuthRequest>,
    ) -> Result<Response<pb::SetAuthResponse>, Status> {
        let enabled = req.into_inner().enabled;
        let (applied_index, created) = set_auth(&self.node, &self.gate, enabled).await?;
        tracing::info!(enabled, "authentication switched");
        let (admin_token_name, admin_secret) = created
            .map(|(t, s)| (t.name, s.expose().to_owned()))
            .unwrap_or_default();
        let resp = Response::new(pb::SetAuthResponse {
            enabled,
            applied_index,
            admin_token_name,
            admin_secret,
        });
        Ok(crate::audit::resource(
            resp,
            format!("auth/{}", if enabled { "on" } else { "off" }),
        ))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let id = req
            .extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or(Identity::Anonymous);
        Ok(Response::new(pb::WhoAmIResponse {
            name: id.name(),
            role: id.role().map(Role::as_str).unwrap_or_default().to_owned(),
            auth_enabled: self.gate.enabled(),
        }))
    }
}
