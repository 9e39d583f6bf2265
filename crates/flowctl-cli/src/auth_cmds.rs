//! `flowctl auth ...`: bearer tokens (create, ls, revoke) and `whoami`.
//!
//! `token create` prints the secret alone on standard output, so that
//! `export FLOWCTL_TOKEN=$(flowctl auth token create ...)` works; everything meant for a person
//! goes to standard error.

use crate::commands::{client, now_ms, parse_duration, rfc3339, status_err, ts_ms};
use crate::output::print;
use crate::{Format, Global};
use clap::Subcommand;
use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::auth_service_client::AuthServiceClient;
use flowctl_client::AuthChannel;
use flowctl_state::auth::Role;
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum AuthCmd {
    /// Create, list and revoke bearer tokens.
    Token {
        #[command(subcommand)]
        what: TokenCmd,
    },
    /// Who the serving node takes the caller for: name, role, and whether authentication is on.
    Whoami,
    /// Turn authentication on for the whole cluster (admin only once it is on). Every node
    /// needs the peer secret first. If no admin token exists, one is created and its secret
    /// printed on standard output, this once.
    Enable,
    /// Turn authentication off for the whole cluster (admin only): every caller is then
    /// let in without credentials.
    Disable,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token; its secret is printed on standard output, this once only.
    Create(CreateArgs),
    /// Every token: name, role, when it was created and when it expires.
    #[command(alias = "list")]
    Ls,
    /// Revoke a token by name, on every node.
    Revoke { name: String },
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// A DNS label, unique among tokens.
    #[arg(long)]
    pub name: String,
    /// What the token may do: admin, operator, agent or reader.
    #[arg(long, value_parser = Role::parse)]
    pub role: Role,
    /// How long the token lives, such as 30m, 24h or 90d (default: it never expires).
    #[arg(long)]
    pub ttl: Option<String>,
}

fn auth(ch: AuthChannel) -> AuthServiceClient<AuthChannel> {
    AuthServiceClient::new(ch)
}

fn on_off(enabled: bool) -> &'static str {
    if enabled {
        "on"
    } else {
        "off"
    }
}

/// A timestamp as RFC 3339, or null when it is unset.
fn time_json(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(_) => json!(rfc3339(ts_ms(t))),
        None => Value::Null,
    }
}

fn token_json(t: &pb::TokenInfo) -> Value {
    json!({
        "name": t.name,
        "role": t.role,
        "created_at": time_json(&t.created_at),
        "expires_at": time_json(&t.expires_at),
    })
}

/// `never`, the expiry time, or the expiry time marked as past.
fn expires_cell(t: &pb::TokenInfo, now_ms: u64) -> String {
    match &t.expires_at {
        None => "never".to_owned(),
        Some(_) if ts_ms(&t.expires_at) <= now_ms => {
            format!("{} (expired)", rfc3339(ts_ms(&t.expires_at)))
        }
        Some(_) => rfc3339(ts_ms(&t.expires_at)),
    }
}

fn token_rows(tokens: &[pb::TokenInfo], now_ms: u64) -> Vec<Vec<String>> {
    let mut rows = vec![["NAME", "ROLE", "CREATED", "EXPIRES"]
        .map(str::to_owned)
        .to_vec()];
    for t in tokens {
        rows.push(vec![
            t.name.clone(),
            t.role.clone(),
            rfc3339(ts_ms(&t.created_at)),
            expires_cell(t, now_ms),
        ]);
    }
    rows
}

/// The line `token create` writes to standard error.
fn created_note(t: &pb::TokenInfo) -> String {
    let expiry = match &t.expires_at {
        None => "never expires".to_owned(),
        Some(_) => format!("expires {}", rfc3339(ts_ms(&t.expires_at))),
    };
    format!(
        "token {} (role {}, {expiry}) created; its secret is shown only once",
        t.name, t.role
    )
}

/// `--ttl` in whole seconds; 0 (never expires) when it is not given.
fn ttl_seconds(ttl: Option<&str>) -> anyhow::Result<u64> {
    let Some(s) = ttl else {
        return Ok(0);
    };
    let d = parse_duration("--ttl", s)?;
    if d.is_zero() {
        anyhow::bail!(
            "--ttl {s:?} must be longer than zero; leave it out for a token that never expires"
        );
    }
    Ok(d.as_secs())
}

pub async fn run(g: &Global, cmd: AuthCmd) -> anyhow::Result<()> {
    match cmd {
        AuthCmd::Token {
            what: TokenCmd::Create(a),
        } => create(g, a).await,
        AuthCmd::Token { what: TokenCmd::Ls } => list(g).await,
        AuthCmd::Token {
            what: TokenCmd::Revoke { name },
        } => revoke(g, name).await,
        AuthCmd::Whoami => whoami(g).await,
        AuthCmd::Enable => set_auth(g, true).await,
        AuthCmd::Disable => set_auth(g, false).await,
    }
}

async fn set_auth(g: &Global, enabled: bool) -> anyhow::Result<()> {
    let resp = client(g)?
        .call(|ch| async move { auth(ch).set_auth(pb::SetAuthRequest { enabled }).await })
        .await
        .map_err(status_err)?
        .into_inner();
    eprintln!(
        "authentication is {} (log index {})",
        on_off(resp.enabled),
        resp.applied_index
    );
    if !resp.admin_secret.is_empty() {
        eprintln!(
            "created admin token {:?}; its secret follows, shown this once",
            resp.admin_token_name
        );
        println!("{}", resp.admin_secret);
    }
    Ok(())
}

async fn create(g: &Global, a: CreateArgs) -> anyhow::Result<()> {
    let req = pb::CreateTokenRequest {
        name: a.name.clone(),
        role: a.role.as_str().to_owned(),
        ttl_seconds: ttl_seconds(a.ttl.as_deref())?,
    };
    let resp = client(g)?
        .call(|ch| {
            let req = req.clone();
            async move { auth(ch).create_token(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    if resp.secret.is_empty() {
        anyhow::bail!("the server created token {} but returned no secret", a.name);
    }
    let mut info = resp.token.unwrap_or_default();
    if info.name.is_empty() {
        info.name = a.name;
    }
    if info.role.is_empty() {
        info.role = a.role.as_str().to_owned();
    }
    eprintln!("{}", created_note(&info));
    match g.output {
        Format::Table | Format::Wide => println!("{}", resp.secret),
        f => {
            let mut v = token_json(&info);
            v["secret"] = json!(resp.secret);
            print(f, &v, |_| Vec::new())?;
        }
    }
    Ok(())
}

async fn list(g: &Global) -> anyhow::Result<()> {
    let resp = client(g)?
        .call(|ch| async move { auth(ch).list_tokens(pb::ListTokensRequest {}).await })
        .await
        .map_err(status_err)?
        .into_inner();
    eprintln!("authentication is {}", on_off(resp.auth_enabled));
    let v = Value::Array(resp.tokens.iter().map(token_json).collect());
    print(g.output, &v, |_| token_rows(&resp.tokens, now_ms()))
}

async fn revoke(g: &Global, name: String) -> anyhow::Result<()> {
    let req = pb::RevokeTokenRequest { name: name.clone() };
    let resp = client(g)?
        .call(|ch| {
            let req = req.clone();
            async move { auth(ch).revoke_token(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    match g.output {
        Format::Table | Format::Wide => {
            println!("token {name} revoked");
            Ok(())
        }
        f => print(
            f,
            &json!({"name": name, "revoked": true, "log_index": resp.log_index}),
            |_| Vec::new(),
        ),
    }
}

async fn whoami(g: &Global) -> anyhow::Result<()> {
    let resp = client(g)?
        .call(|ch| async move { auth(ch).who_am_i(pb::WhoAmIRequest {}).await })
        .await
        .map_err(status_err)?
        .into_inner();
    let v = json!({
        "name": resp.name,
        "role": resp.role,
        "auth_enabled": resp.auth_enabled,
    });
    print(g.output, &v, |_| {
        vec![
            ["NAME", "ROLE", "AUTH"].map(str::to_owned).to_vec(),
            vec![
                resp.name.clone(),
                resp.role.clone(),
                on_off(resp.auth_enabled).to_owned(),
            ],
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;
    use crate::ConsistencyArg;
    use flowctl_client::proto::admin::v1::auth_service_server::{AuthService, AuthServiceServer};
    use std::sync::{Arc, Mutex};
    use tokio_util::sync::CancellationToken;
    use tonic::{Request, Response, Status};

    fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn info(name: &str, expires_at: Option<prost_types::Timestamp>) -> pb::TokenInfo {
        pb::TokenInfo {
            name: name.into(),
            role: "operator".into(),
            created_at: ts(1_700_000_000),
            expires_at,
        }
    }

    #[test]
    fn ttl_is_a_cli_duration_and_absent_means_never() {
        assert_eq!(ttl_seconds(None).unwrap(), 0);
        assert_eq!(ttl_seconds(Some("24h")).unwrap(), 86_400);
        assert_eq!(ttl_seconds(Some("90d")).unwrap(), 90 * 86_400);
        let e = ttl_seconds(Some("0s")).unwrap_err().to_string();
        assert!(e.contains("never expires"), "{e}");
        let e = ttl_seconds(Some("1 day")).unwrap_err().to_string();
        assert!(e.starts_with("--ttl "), "{e}");
    }

    #[test]
    fn token_json_has_null_for_a_token_that_never_expires() {
        let v = token_json(&info("ci", None));
        assert_eq!(
            v,
            json!({
                "name": "ci",
                "role": "operator",
                "created_at": "2023-11-14T22:13:20Z",
                "expires_at": null,
            })
        );
        let v = token_json(&info("ci", ts(1_700_086_400)));
        assert_eq!(v["expires_at"], "2023-11-15T22:13:20Z");
    }

    #[test]
    fn token_rows_show_never_and_expired() {
        let now = 1_700_050_000_000;
        let rows = token_rows(
            &[
                info("forever", None),
                info("old", ts(1_700_000_100)),
                info("new", ts(1_700_086_400)),
            ],
            now,
        );
        assert_eq!(rows[0], ["NAME", "ROLE", "CREATED", "EXPIRES"]);
        assert_eq!(rows[1][3], "never");
        assert_eq!(rows[2][3], "2023-11-14T22:15:00Z (expired)");
        assert_eq!(rows[3][3], "2023-11-15T22:13:20Z");
    }

    #[test]
    fn the_created_note_names_the_token_role_and_expiry() {
        assert_eq!(
            created_note(&info("ci", ts(1_700_086_400))),
            "token ci (role operator, expires 2023-11-15T22:13:20Z) created; its secret is shown only once"
        );
        assert_eq!(
            created_note(&info("ci", None)),
            "token ci (role operator, never expires) created; its secret is shown only once"
        );
    }

    /// An AuthService that records each call's `authorization` header and refuses calls
    /// without one, as a node with authentication on does.
    #[derive(Clone, Default)]
    struct FakeAuth {
        seen: Arc<Mutex<Vec<Option<String>>>>,
    }

    impl FakeAuth {
        fn check<T>(&self, req: &Request<T>) -> Result<String, Status> {
            let header = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            self.seen.lock().unwrap().push(header.clone());
            match header.as_deref().and_then(|h| h.strip_prefix("Bearer ")) {
                Some(t) => Ok(t.to_owned()),
                None => Err(Status::unauthenticated("no token given")),
            }
        }
    }

    #[tonic::async_trait]
    impl AuthService for FakeAuth {
        async fn create_token(
            &self,
            req: Request<pb::CreateTokenRequest>,
        ) -> Result<Response<pb::CreateTokenResponse>, Status> {
            self.check(&req)?;
            Err(Status::permission_denied("not in the fake"))
        }

        async fn list_tokens(
            &self,
            req: Request<pb::ListTokensRequest>,
        ) -> Result<Response<pb::ListTokensResponse>, Status> {
            self.check(&req)?;
            Err(Status::permission_denied("not in the fake"))
        }

        async fn revoke_token(
            &self,
            req: Request<pb::RevokeTokenRequest>,
        ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
            self.check(&req)?;
            Err(Status::permission_denied("not in the fake"))
        }

        async fn who_am_i(
            &self,
            req: Request<pb::WhoAmIRequest>,
        ) -> Result<Response<pb::WhoAmIResponse>, Status> {
            let token = self.check(&req)?;
            Ok(Response::new(pb::WhoAmIResponse {
                name: format!("holder-of-{token}"),
                role: "reader".into(),
                auth_enabled: true,
            }))
        }

        async fn set_auth(
            &self,
            req: Request<pb::SetAuthRequest>,
        ) -> Result<Response<pb::SetAuthResponse>, Status> {
            self.check(&req)?;
            Err(Status::unimplemented("not used by these tests"))
        }
    }

    fn global(endpoint: String, token: &str) -> Global {
        Global {
            endpoints: endpoint,
            output: Format::Table,
            consistency: ConsistencyArg::Linearizable,
            timeout: 5,
            // Explicit, so that a FLOWCTL_TOKEN in the test's environment does not matter.
            token: Some(Secret::from(token.to_owned())),
            token_file: None,
        }
    }

    async fn whoami_call(g: &Global) -> anyhow::Result<pb::WhoAmIResponse> {
        Ok(client(g)?
            .call(|ch| async move { auth(ch).who_am_i(pb::WhoAmIRequest {}).await })
            .await
            .map_err(status_err)?
            .into_inner())
    }

    #[tokio::test]
    async fn cli_calls_carry_the_token_and_a_missing_one_reads_as_not_authenticated() {
        let fake = FakeAuth::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthServiceServer::new(fake.clone()))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stop.clone().cancelled_owned(),
                ),
        );

        let me = whoami_call(&global(addr.to_string(), "s3cret"))
            .await
            .unwrap();
        assert_eq!(me.name, "holder-of-s3cret");

        let e = whoami_call(&global(addr.to_string(), ""))
            .await
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "not authenticated: no token given (give a token with --token, --token-file or FLOWCTL_TOKEN)"
        );
        assert_eq!(
            *fake.seen.lock().unwrap(),
            [Some("Bearer s3cret".to_owned()), None]
        );

        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
