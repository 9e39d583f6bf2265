//! Bad input gets a clear one-line error and a non-zero exit: never a panic or a hang.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_testkit::{flowctl_bin, free_port, Cluster, ClusterOptions};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    Command::new(flowctl_bin().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts a failed run with exactly one line on stderr containing `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    assert!(lines[0].contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_yaml_and_unknown_kind_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: flowctl/v1\nkind: [Pipeline\n").unwrap();
    let out = run(&[
        "apply",
        "-f",
        bad.to_str().unwrap(),
        "--endpoints",
        "127.0.0.1:1",
    ]);
    assert_one_line_error(&out, "bad.yaml:2:7");
    let kind = dir.path().join("kind.yaml");
    std::fs::write(
        &kind,
        "apiVersion: flowctl/v1\nkind: Pipe\nmetadata:\n  name: x\n",
    )
    .unwrap();
    let out = run(&[
        "apply",
        "-f",
        kind.to_str().unwrap(),
        "--endpoints",
        "127.0.0.1:1",
    ]);
    assert_one_line_error(&out, "kind.yaml:2:7: kind: unknown kind \"Pipe\"");
    let out = run(&["apply", "-f", "/nonexistent/x.yaml"]);
    assert_one_line_error(&out, "cannot read /nonexistent/x.yaml");
}

#[test]
fn unreachable_join_address_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dead = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = run(&[
        "server",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--peer-listen",
        "127.0.0.1:0",
        "--metrics-port",
        "0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--join",
        &dead,
        "--join-timeout",
        "2",
    ]);
    assert_one_line_error(&out, "cannot join the cluster");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&dead));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn port_in_use_fails_with_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "server",
        "--listen",
        &addr,
        "--peer-listen",
        "127.0.0.1:0",
        "--metrics-port",
        "0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &format!("cannot listen on {addr}"));
}

#[test]
fn client_against_no_server_fails_within_its_timeout() {
    let out = run(&[
        "get",
        "pipelines",
        "--endpoints",
        &format!("127.0.0.1:{}", free_port()),
        "--timeout",
        "2",
    ]);
    assert_one_line_error(&out, "cluster unavailable");
}

#[test]
fn data_dir_of_another_cluster_and_oversized_requests_are_refused() {
    let mut a = Cluster::start(1, ClusterOptions::default()).unwrap();
    let b = Cluster::start(
        1,
        ClusterOptions {
            extra_args: vec!["--max-request-bytes".into(), "2048".into()],
            ..Default::default()
        },
    )
    .unwrap();
    // Node a0's data dir belongs to cluster A; point it at cluster B.
    // Stop the node but keep the cluster's temp dir (dropping `a` would delete it).
    let a_dir = a.nodes[0].data_dir.clone();
    a.kill(0);
    let out = run(&[
        "server",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--peer-listen",
        "127.0.0.1:0",
        "--metrics-port",
        "0",
        "--data-dir",
        a_dir.to_str().unwrap(),
        "--join",
        &b.nodes[0].peer_addr,
    ]);
    assert_one_line_error(&out, "belongs to cluster");

    // A request over the configured limit is refused with a one-line error, and the node
    // keeps serving.
    let big = b.dir().join("big.yaml");
    let note = "x".repeat(4096);
    std::fs::write(
        &big,
        format!(
            "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: big\nspec:\n  sources:\n    - id: src\n      command: [\"true\"]\n      env:\n        PAD: \"{note}\"\n  sinks:\n    - id: sink\n      command: [\"true\"]\n      inputs: [src]\n"
        ),
    )
    .unwrap();
    let out = b
        .flowctl(0, &["apply", "-f", big.to_str().unwrap()])
        .unwrap();
    assert_one_line_error(&out, "request rejected");
    let ok = b.flowctl(0, &["get", "pipelines"]).unwrap();
    assert!(ok.status.success());
}

#[test]
fn non_loopback_listen_without_insecure_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "server",
        "--listen",
        &format!("0.0.0.0:{}", free_port()),
        "--peer-listen",
        "127.0.0.1:0",
        "--metrics-port",
        "0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "is not a loopback address");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"));
}

#[test]
fn a_reader_that_leaves_early_ends_the_cli_quietly() {
    use std::process::Stdio;
    let mut child = std::process::Command::new(flowctl_testkit::flowctl_bin().unwrap())
        .args(["schema", "pipeline"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the CLI writes its 10 KB.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // 141 when the write met the closed pipe (the usual case), 0 if it got there first.
    assert!(
        matches!(out.status.code(), Some(141 | 0)),
        "{:?}",
        out.status
    );
}
