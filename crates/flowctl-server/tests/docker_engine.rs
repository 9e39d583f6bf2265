//! The Docker engine client against a real engine (Debian's dockerd, which
//! `scripts/docker.sh start` starts; `DOCKER_HOST` names it). `scripts/test.sh` runs this file
//! only where an engine can run, and says so when it cannot.
//!
//! The image is made here, from a tarball of the host's `/bin/sh` and its libraries: no
//! registry is reached.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_server::docker::{ContainerSpec, DockerError, Engine, Output, Pull, LABEL_NODE};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

const IMAGE: &str = "flowctl-test/sh:1";

/// A tarball of /bin/sh, /bin/sleep and the libraries they load.
fn rootfs() -> Vec<u8> {
    flowctl_testkit::rootfs_tar(&[("/bin/sh".into(), None), ("/bin/sleep".into(), None)]).unwrap()
}

async fn engine() -> Engine {
    let e = Engine::connect()
        .await
        .unwrap_or_else(|e| panic!("{e}: these tests need a Docker engine"));
    if !e.has_image(IMAGE).await.unwrap() {
        e.import_rootfs(rootfs(), IMAGE).await.unwrap();
    }
    e
}

fn spec(name: &str, script: &str, node: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: IMAGE.into(),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: vec![script.into()],
        env: [("GREETING".to_owned(), "hello".to_owned())].into(),
        labels: [(LABEL_NODE.to_owned(), node.to_owned())].into(),
        network: "host".into(),
        cpu_millis: Some(500),
        memory_bytes: Some(64 << 20),
        user: None,
        read_only_mounts: vec![],
    }
}

fn node_label(node: &str) -> BTreeMap<String, String> {
    [(LABEL_NODE.to_owned(), node.to_owned())].into()
}

#[tokio::test]
async fn a_container_runs_with_its_env_reports_its_exit_and_output_and_is_removed() {
    let e = engine().await;
    let node = format!("test-{}-exit", std::process::id());
    let name = format!("flowctl-test-{}-exit", std::process::id());
    let id = e
        .run(&spec(&name, "echo $GREETING; echo oops >&2; exit 3", &node))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let s = e.state(&id).await.unwrap().unwrap();
        if !s.running {
            break s;
        }
        assert!(Instant::now() < deadline, "still running: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state.exit_text(), "exit status: 3", "{state:?}");
    let out: Vec<Output> = e.output(&id).map(Result::unwrap).collect::<Vec<_>>().await;
    assert!(
        out.contains(&Output::Stdout(b"hello\n".to_vec())),
        "{out:?}"
    );
    assert!(out.contains(&Output::Stderr(b"oops\n".to_vec())), "{out:?}");
    // Found by its node's label, and gone once removed.
    let listed = e.list(&node_label(&node)).await.unwrap();
    assert_eq!(listed.keys().collect::<Vec<_>>(), [&name]);
    assert_eq!(listed[&name][LABEL_NODE], node);
    e.remove(&id).await.unwrap();
    assert!(e.list(&node_label(&node)).await.unwrap().is_empty());
    assert_eq!(e.state(&id).await.unwrap(), None);
    // Removing it again is not an error.
    e.remove(&id).await.unwrap();
}

#[tokio::test]
async fn a_running_container_has_a_pid_and_stops_within_its_grace() {
    let e = engine().await;
    let node = format!("test-{}-stop", std::process::id());
    let name = format!("flowctl-test-{}-stop", std::process::id());
    let id = e.run(&spec(&name, "exec sleep 600", &node)).await.unwrap();
    let s = e.state(&id).await.unwrap().unwrap();
    assert!(s.running && s.pid.is_some(), "{s:?}");
    let t = Instant::now();
    e.stop(&id, Duration::from_secs(1)).await.unwrap();
    let s = e.state(&id).await.unwrap().unwrap();
    assert!(!s.running, "{s:?}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // A second run of the same name replaces the stopped container.
    let id2 = e.run(&spec(&name, "exit 0", &node)).await.unwrap();
    assert_ne!(id, id2);
    assert_eq!(e.list(&node_label(&node)).await.unwrap().len(), 1);
    e.remove(&id2).await.unwrap();
}

#[tokio::test]
async fn a_missing_image_under_never_is_an_error_that_names_it() {
    let e = engine().await;
    let err = e
        .ensure_image("flowctl-test/absent:1", Pull::Never)
        .await
        .unwrap_err();
    assert!(matches!(err, DockerError::ImageMissing { .. }), "{err}");
    assert!(err.to_string().contains("flowctl-test/absent:1"), "{err}");
    e.ensure_image(IMAGE, Pull::Never).await.unwrap();
    e.ensure_image(IMAGE, Pull::IfNotPresent).await.unwrap();
}
