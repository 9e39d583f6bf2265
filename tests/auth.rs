//! Authentication and roles on a real 3-node cluster created with `--auth`: the bootstrap
//! admin token, tokens per role, revocation seen by every node, node-to-node RPCs that need
//! the peer secret, and instance tokens for deployed components.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_client::proto::auth::{with_bearer, Bearer};
use flowctl_client::proto::internal::v1::{raft_service_client::RaftServiceClient, ForwardRequest};
use flowctl_client::proto::v1;
use flowctl_client::proto::v1::control_plane_service_client::ControlPlaneServiceClient;
use flowctl_testkit::{flowctl_bin, wait_until, Cluster, ClusterOptions};
use std::process::Output;
use std::time::Duration;

fn doc(name: &str) -> String {
    format!(
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  sources:\n    - id: src\n      command: [\"true\"]\n  sinks:\n    - id: sink\n      command: [\"true\"]\n      inputs: [src]\n"
    )
}

/// A cluster of `n` nodes created with `--auth`.
fn secure(n: usize) -> Cluster {
    Cluster::start(
        n,
        ClusterOptions {
            secure: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed with one `error: …` line that contains `want`.
fn refused(o: &Output, want: &str) {
    assert!(
        !o.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = stderr(o);
    assert!(e.contains(want), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `auth token create` as admin; returns the secret.
fn token(c: &Cluster, name: &str, role: &str) -> String {
    let out = c
        .flowctl(
            0,
            &["auth", "token", "create", "--name", name, "--role", role],
        )
        .unwrap();
    let secret = ok(&out).trim().to_owned();
    assert!(secret.starts_with("flowctl_"), "{secret}");
    secret
}

#[test]
fn roles_decide_who_may_do_what_and_revocation_reaches_every_node() {
    let c = secure(3);
    let file = c.dir().join("p.yaml");
    std::fs::write(&file, doc("authz")).unwrap();
    let file = file.to_str().unwrap();

    // The bootstrap admin token is in a file only its owner can read.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.admin_token_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let log = std::fs::read_to_string(&c.nodes[0].log_path).unwrap();
        let secret = std::fs::read_to_string(c.admin_token_file()).unwrap();
        assert!(!log.contains(secret.trim()), "the admin token was logged");
    }

    // No credentials, or a made-up token: UNAUTHENTICATED.
    refused(
        &c.flowctl_as(1, None, &["get", "pipelines"]).unwrap(),
        "not authenticated",
    );
    refused(
        &c.flowctl_as(
            1,
            Some("flowctl_0000000000000000000000000000000000000000"),
            &["get", "pipelines"],
        )
        .unwrap(),
        "not authenticated",
    );

    let reader = token(&c, "ci-reader", "reader");
    let operator = token(&c, "deployer", "operator");
    let agent = token(&c, "agent-1", "agent");

    // A reader reads, and may not write.
    ok(&c
        .flowctl_as(1, Some(&reader), &["get", "pipelines"])
        .unwrap());
    refused(
        &c.flowctl_as(1, Some(&reader), &["apply", "-f", file])
            .unwrap(),
        "permission denied",
    );
    // An operator applies, and may not manage tokens or membership.
    ok(&c
        .flowctl_as(2, Some(&operator), &["apply", "-f", file])
        .unwrap());
    refused(
        &c.flowctl_as(
            2,
            Some(&operator),
            &["auth", "token", "create", "--name", "x", "--role", "admin"],
        )
        .unwrap(),
        "permission denied",
    );
    refused(
        &c.flowctl_as(2, Some(&operator), &["cluster", "remove", "12345"])
            .unwrap(),
        "permission denied",
    );
    // An agent registers and heartbeats, and may not apply.
    refused(
        &c.flowctl_as(1, Some(&agent), &["apply", "-f", file])
            .unwrap(),
        "permission denied",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = c.nodes[1].addr.clone();
    let agent2 = agent.clone();
    rt.block_on(async move {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut anon = ControlPlaneServiceClient::new(ch.clone());
        let req = || v1::RegisterRequest {
            component: Some(v1::ComponentInfo {
                id: "auth-probe".into(),
                r#type: v1::ComponentType::Processor as i32,
                ..Default::default()
            }),
            component_id: String::new(),
        };
        let e = anon.register_component(req()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        let mut cp =
            ControlPlaneServiceClient::new(with_bearer(ch, Bearer::new(Some(&agent2)).unwrap()));
        let id = cp
            .register_component(req())
            .await
            .unwrap()
            .into_inner()
            .service_id;
        cp.heartbeat(v1::HeartbeatRequest {
            service_id: id,
            ..Default::default()
        })
        .await
        .unwrap();
    });

    // Revoking the reader's token refuses it on every node.
    ok(&c
        .flowctl(0, &["auth", "token", "revoke", "ci-reader"])
        .unwrap());
    for i in 0..3 {
        wait_until(Duration::from_secs(10), || {
            !c.flowctl_as(i, Some(&reader), &["get", "pipelines"])
                .unwrap()
                .status
                .success()
        })
        .unwrap_or_else(|e| panic!("node {i} still accepts the revoked token: {e}"));
        refused(
            &c.flowctl_as(i, Some(&reader), &["get", "pipelines"])
                .unwrap(),
            "not authenticated",
        );
    }
    // Tokens are listed by name and role, never with their secrets.
    let listed = ok(&c
        .flowctl(1, &["auth", "token", "ls", "-o", "json"])
        .unwrap());
    assert!(
        listed.contains("deployer") && !listed.contains("ci-reader"),
        "{listed}"
    );
    assert!(!listed.contains(&operator), "{listed}");
    let who = ok(&c
        .flowctl_as(2, Some(&operator), &["auth", "whoami", "-o", "json"])
        .unwrap());
    assert!(
        who.contains("deployer") && who.contains("operator"),
        "{who}"
    );

    // Node-to-node RPCs need the peer secret: a forged Forward is refused, with or without
    // an admin token, and changes nothing.
    let admin = std::fs::read_to_string(c.admin_token_file()).unwrap();
    let (addr, peer_addr) = (c.nodes[0].addr.clone(), c.nodes[0].peer_addr.clone());
    rt.block_on(async move {
        let cmd =
            flowctl_state::Command::DeletePipeline(flowctl_state::pipelines::DeletePipeline {
                name: "authz".into(),
            });
        // The public port does not serve them at all, whatever the credentials.
        let public = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raft = RaftServiceClient::new(with_bearer(
            public,
            Bearer::new(Some(admin.trim())).unwrap(),
        ));
        let forged = || ForwardRequest {
            command: flowctl_state::codec::encode_command(&cmd).unwrap(),
            hops: 0,
        };
        let e = raft.forward(forged()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{peer_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for token in [None, Some(admin.trim())] {
            let mut raft =
                RaftServiceClient::new(with_bearer(ch.clone(), Bearer::new(token).unwrap()));
            let e = raft.forward(forged()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        }
    });
    let names = ok(&c.flowctl(0, &["get", "pipelines", "-o", "json"]).unwrap());
    assert!(names.contains("authz"), "{names}");

    // The audit log names who made each accepted write, on every node; only admins read it.
    let mut audit = serde_json::Value::Null;
    wait_until(Duration::from_secs(10), || {
        audit = c.json(2, &["audit", "ls"]).unwrap_or_default();
        let has = |who: &str, method: &str| {
            audit.as_array().is_some_and(|a| {
                a.iter().any(|r| {
                    r["who"] == who && r["method"].as_str().is_some_and(|m| m.ends_with(method))
                })
            })
        };
        has("deployer", "/ApplyPipeline")
            && audit.as_array().is_some_and(|a| {
                a.iter().any(|r| {
                    r["who"] == "deployer"
                        && r["resource"] == "pipeline/authz"
                        && r["method"]
                            .as_str()
                            .is_some_and(|m| m.ends_with("/ApplyPipeline"))
                })
            })
            && has("admin", "/CreateToken")
            && has("admin", "/RevokeToken")
            && has("agent-1", "/RegisterComponent")
    })
    .unwrap_or_else(|e| panic!("audit log incomplete: {e}\n{audit:#}"));
    // Refused calls are not recorded.
    assert!(
        !audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["who"] == "ci-reader"),
        "a refused write was audited: {audit:#}"
    );
    let only = c.json(0, &["audit", "ls", "--user", "deployer"]).unwrap();
    assert!(
        only.as_array()
            .unwrap()
            .iter()
            .all(|r| r["who"] == "deployer"),
        "{only:#}"
    );
    refused(
        &c.flowctl_as(1, Some(&operator), &["audit", "ls"]).unwrap(),
        "permission denied",
    );
}

#[test]
fn deployed_components_register_with_their_instance_tokens() {
    let c = secure(1);
    let dir = flowctl_bin().unwrap().parent().unwrap().to_path_buf();
    let yaml = format!(
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: tokens\nspec:\n  sources:\n    - id: src\n      command: [\"{}\"]\n  sinks:\n    - id: sink\n      command: [\"{}\"]\n      inputs: [src]\n",
        dir.join("source-registration").display(),
        dir.join("consumer-registration").display()
    );
    let file = c.dir().join("p.yaml");
    std::fs::write(&file, yaml).unwrap();
    ok(&c
        .flowctl(0, &["apply", "-f", file.to_str().unwrap()])
        .unwrap());
    // Anonymous agents are not allowed here, so only their own tokens can register them.
    wait_until(Duration::from_secs(30), || {
        c.json(0, &["list"])
            .map(|v| {
                let ids: Vec<String> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|x| x["status"] == "healthy")
                    .map(|x| x["id"].as_str().unwrap().to_owned())
                    .collect();
                ids.contains(&"src".to_owned()) && ids.contains(&"sink".to_owned())
            })
            .unwrap_or(false)
    })
    .unwrap_or_else(|e| panic!("components did not register: {e}\n{}", c.log_tail(0, 30)));

    // An instance token speaks for its own component only.
    let peer = flowctl_server::auth::Secret::read(&c.peer_token_file()).unwrap();
    let src_token = flowctl_server::auth::instance_token(&peer, "src");
    let addr = c.nodes[0].addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bearer = Bearer::new(Some(&src_token)).unwrap();
        // Nor may it report or watch replay chunks for another component.
        let mut replay =
            flowctl_client::proto::admin::v1::replay_service_client::ReplayServiceClient::new(
                with_bearer(ch.clone(), bearer.clone()),
            );
        let e = replay
            .report_chunk(flowctl_client::proto::admin::v1::ChunkReport {
                component_id: "sink".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let e = replay
            .watch_chunks(flowctl_client::proto::admin::v1::WatchChunksRequest {
                component_id: "sink".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let mut cp = ControlPlaneServiceClient::new(with_bearer(ch, bearer));
        let e = cp
            .register_component(v1::RegisterRequest {
                component: Some(v1::ComponentInfo {
                    id: "sink".into(),
                    ..Default::default()
                }),
                component_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let e = cp
            .heartbeat(v1::HeartbeatRequest {
                service_id: "sink".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        // Its own heartbeat is accepted.
        cp.heartbeat(v1::HeartbeatRequest {
            service_id: "src".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    });
}

#[test]
fn anonymous_agents_may_use_only_the_component_apis() {
    let c = Cluster::start(
        1,
        ClusterOptions {
            secure: true,
            extra_args: vec!["--allow-anonymous-agents".into()],
            ..Default::default()
        },
    )
    .unwrap();
    // The original components send no credentials: they still register (legacy and v1).
    let addr = c.nodes[0].addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut v1c = ControlPlaneServiceClient::new(ch.clone());
        v1c.register_component(v1::RegisterRequest {
            component: Some(v1::ComponentInfo {
                id: "anon-v1".into(),
                ..Default::default()
            }),
            component_id: String::new(),
        })
        .await
        .unwrap();
        let mut legacy =
            flowctl_client::proto::legacy::control_plane_client::ControlPlaneClient::new(ch);
        legacy
            .register(flowctl_client::proto::legacy::ServiceInfo {
                service_id: "anon-legacy".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    // ...and nothing else.
    refused(
        &c.flowctl_as(0, None, &["get", "pipelines"]).unwrap(),
        "not authenticated",
    );
    let listed = ok(&c.flowctl(0, &["list", "-o", "json"]).unwrap());
    assert!(
        listed.contains("anon-v1") && listed.contains("anon-legacy"),
        "{listed}"
    );
}

#[test]
fn a_node_without_the_peer_secret_cannot_join_a_secure_cluster() {
    let c = secure(1);
    let dir = tempfile::tempdir().unwrap();
    // A new node on `dir`, joining node 0, with `extra` flags; it must fail.
    let start = |extra: &[&str]| {
        let port = format!("127.0.0.1:{}", flowctl_testkit::free_port());
        let out = std::process::Command::new(flowctl_bin().unwrap())
            .args([
                "server",
                "--listen",
                &port,
                "--peer-listen",
                "127.0.0.1:0",
                "--metrics-port",
                "0",
                "--kafka-brokers=",
            ])
            .args([
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--join",
                &c.nodes[0].peer_addr,
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        stderr(&out)
    };
    let e = start(&["--join-timeout", "3"]);
    assert!(
        e.contains("cannot join") && e.contains("peer secret"),
        "{e}"
    );
    // And --auth cannot be used to make up credentials for an existing cluster.
    let e = start(&["--auth"]);
    assert!(e.contains("--peer-token-file"), "{e}");
    let members = c.json(0, &["cluster", "members"]).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
}

#[test]
fn auth_on_a_cluster_created_without_it_is_refused_not_ignored() {
    let mut c = Cluster::start(1, ClusterOptions::default()).unwrap();
    let data = c.nodes[0].data_dir.clone();
    c.kill(0);
    let out = std::process::Command::new(flowctl_bin().unwrap())
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{}", flowctl_testkit::free_port()),
            "--peer-listen",
            "127.0.0.1:0",
            "--metrics-port",
            "0",
            "--kafka-brokers=",
            "--auth",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("created without it"), "{e}");
    assert_eq!(
        e.trim().lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{e}"
    );
}

#[test]
fn auth_can_be_switched_off_and_on_by_an_admin_on_a_running_cluster() {
    let c = secure(1);
    let reader = ok(&c
        .flowctl(
            0,
            &["auth", "token", "create", "--name", "r", "--role", "reader"],
        )
        .unwrap());
    refused(
        &c.flowctl_as(0, Some(reader.trim()), &["auth", "disable"])
            .unwrap(),
        "permission denied",
    );
    ok(&c.flowctl(0, &["auth", "disable"]).unwrap());
    // Off: anyone is let in.
    ok(&c.flowctl_as(0, None, &["get", "pipelines"]).unwrap());
    // On again; an admin token exists, so none is created.
    let out = c.flowctl_as(0, None, &["auth", "enable"]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    refused(
        &c.flowctl_as(0, None, &["get", "pipelines"]).unwrap(),
        "not authenticated",
    );
    ok(&c.flowctl(0, &["get", "pipelines"]).unwrap());

    // A cluster whose nodes have no peer secret cannot turn it on.
    let open = Cluster::start(1, ClusterOptions::default()).unwrap();
    refused(
        &open.flowctl(0, &["auth", "enable"]).unwrap(),
        "peer secret",
    );
    ok(&open.flowctl(0, &["get", "pipelines"]).unwrap());
}
