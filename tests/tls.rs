//! TLS on a real 3-node cluster (`--auth`, TLS on the public port, mTLS on the peer port, all
//! from certificates `flowctl_tls::generate` wrote): the CLI over `https://`, plaintext and
//! foreign-CA clients refused, the peer port refusing a client without a certificate, a client
//! certificate naming its role, and a certificate swapped and reloaded on SIGHUP while the
//! cluster keeps its leader.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_testkit::{wait_until, Cluster, ClusterOptions};
use std::process::{Command, Output};
use std::time::Duration;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The CLI against `endpoint`, with only the flags given (no token, no CA from the kit).
fn cli(endpoint: &str, args: &[&str]) -> Output {
    Command::new(flowctl_testkit::flowctl_bin().unwrap())
        .args(args)
        .env("FLOWCTL_ENDPOINTS", endpoint)
        .env_remove("FLOWCTL_TOKEN")
        .env_remove("FLOWCTL_TOKEN_FILE")
        .env_remove("FLOWCTL_CACERT")
        .env_remove("FLOWCTL_CERT")
        .env_remove("FLOWCTL_KEY")
        .output()
        .unwrap()
}

/// `get pipelines` against `endpoint`, trusting only `ca`, with the admin token in `token`.
fn get_trusting(endpoint: &str, ca: &str, token: &str) -> Output {
    cli(
        endpoint,
        &[
            "get",
            "pipelines",
            "--cacert",
            ca,
            "--token-file",
            token,
            "--timeout",
            "3",
        ],
    )
}

#[test]
fn a_tls_cluster_serves_only_clients_that_trust_it_and_reloads_on_sighup() {
    let c = Cluster::start(
        3,
        ClusterOptions {
            secure: true,
            tls: true,
            ..Default::default()
        },
    )
    .unwrap();
    // Three voters agreeing on a leader: the peers reached each other over mTLS.
    let status = c.json(1, &["cluster", "status"]).unwrap();
    let leader = status["leader_id"].as_u64().unwrap();
    let certs = c.certs_dir();
    let ca = certs.join("ca.crt");
    let ca = ca.to_str().unwrap();
    let admin_token = c.admin_token_file();
    let token = admin_token.to_str().unwrap();
    let https = format!("https://{}", c.nodes[0].addr);

    // The CLI trusting the cluster's CA works against https:// and bare endpoints.
    for endpoint in [https.as_str(), c.nodes[0].addr.as_str()] {
        let out = cli(
            endpoint,
            &["get", "pipelines", "--cacert", ca, "--token-file", token],
        );
        assert!(out.status.success(), "{endpoint}: {}", stderr(&out));
    }

    // A plaintext client is refused.
    let plain = format!("http://{}", c.nodes[0].addr);
    let out = cli(
        &plain,
        &["get", "pipelines", "--token-file", token, "--timeout", "3"],
    );
    assert!(!out.status.success(), "{}", stdout(&out));

    // A client trusting another CA fails the handshake.
    let other = tempfile::tempdir().unwrap();
    flowctl_tls::generate(other.path(), &["127.0.0.1".to_owned()], 1).unwrap();
    let other_ca = other.path().join("ca.crt");
    let out = get_trusting(&https, other_ca.to_str().unwrap(), token);
    assert!(!out.status.success(), "{}", stdout(&out));

    // The peer port requires a certificate from the peer CA: trusting the CA is not enough.
    let out = cli(
        &format!("https://{}", c.nodes[0].peer_addr),
        &["get", "pipelines", "--cacert", ca, "--timeout", "3"],
    );
    assert!(!out.status.success(), "{}", stdout(&out));

    // A client certificate naming the admin role authenticates without a token.
    let (cert, key) = (certs.join("admin.crt"), certs.join("admin.key"));
    let out = cli(
        &https,
        &[
            "auth",
            "whoami",
            "-o",
            "json",
            "--cacert",
            ca,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (who["name"].as_str(), who["role"].as_str()),
        (Some("cert:flowctl-admin"), Some("admin")),
        "{who}"
    );
    // Without the certificate (and without a token) the same call is refused.
    let out = cli(&https, &["get", "pipelines", "--cacert", ca]);
    assert!(
        !out.status.success() && stderr(&out).contains("not authenticated"),
        "{}",
        stderr(&out)
    );

    // Deployed components reach the TLS port: the supervisor gives them FLOWCTL_CACERT and
    // their instance tokens, and the agent SDK uses both.
    let dir = flowctl_testkit::flowctl_bin()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let yaml = format!(
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: tls\nspec:\n  sources:\n    - id: src\n      command: [\"{}\"]\n  sinks:\n    - id: sink\n      command: [\"{}\"]\n      inputs: [src]\n",
        dir.join("source-registration").display(),
        dir.join("consumer-registration").display()
    );
    let file = c.dir().join("p.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = c
        .flowctl(0, &["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(30), || {
        c.json(0, &["list"])
            .map(|v| {
                let healthy = |id: &str| {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["id"] == id && x["status"] == "healthy")
                };
                healthy("src") && healthy("sink")
            })
            .unwrap_or(false)
    })
    .unwrap_or_else(|e| {
        panic!(
            "components did not register over TLS: {e}\n{}",
            c.log_tail(0, 30)
        )
    });

    // Swap node 0's public certificate for one from another CA and send SIGHUP: new
    // connections see the new certificate, and the cluster keeps its leader.
    for ext in ["crt", "key"] {
        std::fs::copy(
            other.path().join(format!("node-1.{ext}")),
            certs.join(format!("node-1.{ext}")),
        )
        .unwrap();
    }
    let pid = c.nodes[0].pid().unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_until(Duration::from_secs(10), || {
        get_trusting(&https, other_ca.to_str().unwrap(), token)
            .status
            .success()
    })
    .unwrap_or_else(|e| {
        panic!(
            "the new certificate was not served: {e}\n{}",
            c.log_tail(0, 20)
        )
    });
    let out = get_trusting(&https, ca, token);
    assert!(!out.status.success(), "the old certificate is still served");
    let after = c.json(1, &["cluster", "status"]).unwrap();
    assert_eq!(after["leader_id"].as_u64(), Some(leader), "{after}");
    assert!(c.log_tail(0, 200).contains("reloaded TLS certificate"));
}
