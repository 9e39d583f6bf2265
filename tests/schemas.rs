//! The schema registry on a real 3-node cluster: pushes through a follower, linearizable reads
//! from every node, a leader killed between pushes, idempotent pushes, compatibility refusals,
//! bad input, and pipelines that must use registered event types.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_testkit::{wait_until, Cluster, ClusterOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

fn protos() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/protos")
}

fn push(c: &Cluster, node: usize, file: &str, package: &str) -> Value {
    let f = protos().join(file);
    c.json(
        node,
        &["schemas", "push", f.to_str().unwrap(), "--package", package],
    )
    .unwrap()
}

/// Subject → (latest version, id), read from node `i`.
fn subjects(c: &Cluster, i: usize) -> BTreeMap<String, (u64, u64)> {
    c.json(i, &["schemas", "ls"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["subject"].as_str().unwrap().to_owned(),
                (
                    s["latest_version"].as_u64().unwrap(),
                    s["id"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn follower_of(c: &Cluster) -> usize {
    (c.leader_index().unwrap() + 1) % c.nodes.len()
}

#[test]
fn pushes_replicate_survive_a_leader_kill_and_are_idempotent() {
    let mut c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let f = follower_of(&c);
    let first = push(&c, f, "token_transfer.proto", "token_transfer");
    let first = first.as_array().unwrap();
    assert!(
        first
            .iter()
            .all(|r| r["changed"] == true && r["version"] == 1),
        "{first:?}"
    );
    let tte = first
        .iter()
        .find(|r| r["subject"] == "token_transfer.TokenTransferEvent")
        .unwrap()["id"]
        .clone();
    // A linearizable read on every node right after the push sees it.
    for i in 0..3 {
        let got = c
            .json(i, &["schemas", "get", "token_transfer.TokenTransferEvent"])
            .unwrap();
        assert_eq!(got["id"], tte, "node {i}");
        assert_eq!(got["version"], 1, "node {i}");
        assert!(got["descriptor"]["file"].is_array(), "node {i}: {got}");
    }
    // The same files again: the same ids and versions, nothing new.
    let again = push(&c, (f + 1) % 3, "token_transfer.proto", "token_transfer");
    for (a, b) in first.iter().zip(again.as_array().unwrap()) {
        assert_eq!(
            (&a["subject"], &a["id"], &a["version"]),
            (&b["subject"], &b["id"], &b["version"])
        );
        assert_eq!(b["changed"], false);
    }

    // SIGKILL the leader between two pushes: nothing is lost.
    let leader = c.leader_index().unwrap();
    c.kill(leader);
    let survivor = (leader + 1) % 3;
    let mut second = None;
    wait_until(Duration::from_secs(20), || {
        let f = protos().join("raw_ledger_service.proto");
        match c.json(
            survivor,
            &[
                "schemas",
                "push",
                f.to_str().unwrap(),
                "--package",
                "raw_ledger_service",
            ],
        ) {
            Ok(v) => {
                second = Some(v);
                true
            }
            Err(_) => false,
        }
    })
    .unwrap();
    assert!(second
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["subject"] == "raw_ledger_service.RawLedgerChunk"));
    c.restart(leader).unwrap();
    c.wait_ready(leader, Duration::from_secs(30)).unwrap();
    // Every node reports the same subjects with the same ids.
    let want = subjects(&c, survivor);
    assert_eq!(want.len(), first.len() + 2, "{want:?}");
    for i in 0..3 {
        assert_eq!(subjects(&c, i), want, "node {i}");
    }
}

#[test]
fn incompatible_pushes_are_refused_with_every_violation_and_modes_apply() {
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    let dir = c.dir().join("protos");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("orders.proto");
    let write = |body: &str| {
        std::fs::write(
            &file,
            format!("syntax = \"proto3\";\npackage orders;\n{body}"),
        )
        .unwrap()
    };
    let run = |args: &[&str]| c.flowctl(0, args).unwrap();
    let f = file.to_str().unwrap().to_owned();
    write("message Order {\n  string id = 1;\n  int32 qty = 2;\n  string note = 3;\n}\n");
    assert!(run(&["schemas", "push", &f, "--package", "orders"])
        .status
        .success());
    // Type change and unreserved deletion: two violations, each with file:line:col and rule.
    write("message Order {\n  string id = 1;\n  string qty = 2;\n}\n");
    for cmd in ["check", "push"] {
        let out = run(&["schemas", cmd, &f, "--package", "orders"]);
        assert!(
            !out.status.success(),
            "{cmd} accepted an incompatible schema"
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("orders.proto:5:3: FIELD_WIRE_COMPATIBLE_TYPE"),
            "{err}"
        );
        assert!(
            err.contains("FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED"),
            "{err}"
        );
        assert!(err.contains("2 compatibility violation(s)"), "{err}");
    }
    assert_eq!(
        c.json(0, &["schemas", "get", "orders.Order"]).unwrap()["version"],
        1,
        "a refused push wrote something"
    );
    // Safe changes pass: a new field, a rename that keeps number and type, a reservation.
    write("message Order {\n  string order_id = 1;\n  int32 qty = 2;\n  reserved 3;\n  int64 placed_at = 4;\n}\n");
    let out = c
        .json(0, &["schemas", "push", &f, "--package", "orders"])
        .unwrap();
    assert_eq!(out[0]["version"], 2, "{out}");
    // NONE lets anything through.
    assert!(run(&[
        "schemas",
        "config",
        "orders.Order",
        "--compatibility",
        "NONE"
    ])
    .status
    .success());
    write("message Order {\n  bytes order_id = 1;\n}\n");
    let out = c
        .json(0, &["schemas", "push", &f, "--package", "orders"])
        .unwrap();
    assert_eq!(out[0]["version"], 3, "{out}");
    let out = run(&[
        "schemas",
        "config",
        "orders.Order",
        "--compatibility",
        "SIDEWAYS",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("compatibility"));
    // diff between versions.
    let out = run(&[
        "schemas",
        "diff",
        "orders.Order",
        "--from",
        "1",
        "--to",
        "2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("placed_at") && text.contains("version 1"),
        "{text}"
    );
    // Delete: soft first, then permanent.
    let out = run(&[
        "schemas",
        "delete",
        "orders.Order",
        "--version",
        "3",
        "--permanent",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("soft-deleted first"));
    assert!(
        run(&["schemas", "delete", "orders.Order", "--version", "3"])
            .status
            .success()
    );
    assert_eq!(
        c.json(0, &["schemas", "get", "orders.Order"]).unwrap()["version"],
        2
    );
    assert!(run(&[
        "schemas",
        "delete",
        "orders.Order",
        "--version",
        "3",
        "--permanent"
    ])
    .status
    .success());
}

#[test]
fn bad_proto_input_gets_one_clear_line() {
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    let dir = c.dir().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let cases: &[(&str, String, &str)] = &[
        ("syntax.proto", "syntax = \"proto3\";\npackage x;\nmessage A { int32 a = 1 }\n".into(), "syntax.proto:3:25"),
        ("imports.proto", "syntax = \"proto3\";\npackage x;\nimport \"nope/y.proto\";\nmessage A { int32 a = 1; }\n".into(), "nope/y.proto"),
        ("empty.proto", "syntax = \"proto3\";\npackage x;\nenum E { E_0 = 0; }\n".into(), "defines no messages"),
        (
            "huge.proto",
            format!(
                "syntax = \"proto3\";\npackage x;\n// {}\nmessage A {{ int32 a = 1; }}\n",
                "x".repeat(2 * 1024 * 1024)
            ),
            "limit",
        ),
    ];
    for (name, text, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let out = c
            .flowctl(
                0,
                &["schemas", "push", p.to_str().unwrap(), "--package", "x"],
            )
            .unwrap();
        assert!(!out.status.success(), "{name} was accepted");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.starts_with("error: ") && err.trim_end().lines().count() == 1,
            "{name}: {err}"
        );
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn pipelines_must_declare_registered_event_types() {
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    let doc = c.dir().join("p.yaml");
    std::fs::write(
        &doc,
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: typed\nspec:\n  driver: kubernetes\n  sources:\n    - id: src\n      image: src:1\n      output_event_types: [raw_ledger_service.RawLedgerChunk]\n  sinks:\n    - id: sink\n      image: sink:1\n      inputs: [src]\n      input_event_types: [raw_ledger_service.RawLedgerChunk, token_transfer.TokenTransferEvent]\n",
    )
    .unwrap();
    let d = doc.to_str().unwrap();
    let out = c.flowctl(0, &["apply", "-f", d]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("raw_ledger_service.RawLedgerChunk, token_transfer.TokenTransferEvent")
            && err.contains("--allow-unregistered-types"),
        "{err}"
    );
    assert!(c
        .flowctl(
            0,
            &["apply", "--dry-run", "--allow-unregistered-types", "-f", d]
        )
        .unwrap()
        .status
        .success());
    push(&c, 0, "raw_ledger_service.proto", "raw_ledger_service");
    let out = c.flowctl(0, &["apply", "-f", d]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success()
            && !err.contains("RawLedgerChunk,")
            && err.contains("token_transfer.TokenTransferEvent"),
        "{err}"
    );
    push(&c, 0, "token_transfer.proto", "token_transfer");
    let out = c.flowctl(0, &["apply", "-f", d]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The graph of the stored pipeline shows the schema versions on its edges.
    let out = c
        .flowctl(0, &["graph", "--pipeline", "typed", "--format", "text"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("raw_ledger_service.RawLedgerChunk (v1, id "),
        "{text}"
    );
    // examples/register-schemas.sh pushes the same two packages: nothing new to register.
    let script = protos().join("../register-schemas.sh");
    let out = std::process::Command::new(script)
        .env("FLOWCTL_BIN", flowctl_testkit::flowctl_bin().unwrap())
        .env("FLOWCTL_ENDPOINTS", &c.nodes[0].addr)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("2 subject(s) in raw_ledger_service: 0 new versions, 2 unchanged")
            && said.contains("in token_transfer: 0 new versions"),
        "{said}"
    );
}
