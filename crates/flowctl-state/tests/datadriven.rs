//! Data-driven tests of the state machine, in the style of raft-rs's `datadriven`: each file
//! under `tests/testdata/` is a script of commands in and expected outputs out.
//!
//! A script is a sequence of blocks, separated by blank lines; lines starting with `#` between
//! blocks are comments. A block is a directive line, its input (possibly none), a `----` line,
//! and the expected output, which ends at the next blank line:
//!
//! ```text
//! # A comment.
//! apply index=1
//! {"DeletePipeline":{"name":"nope"}}
//! ----
//! outcome: {"Rejected":{"NotFound":{"kind":"pipeline","name":"nope"}}}
//! touched: none
//! state: 0f1e2d3c4b5a6978
//! ```
//!
//! Directives:
//! - `apply [index=N] [records]`: the input is one `Command` as the codec's JSON (over as many
//!   lines as it likes), applied at log index N (default: one more than the previous apply).
//!   The output is the outcome as the codec's JSON (one line per element for a batch), the
//!   keys `apply` reported as touched, and a digest of the state after it. With `records`, each
//!   touched record is printed too, as the store would write it (or `deleted`).
//! - `show PATH...`: the part of the state at PATH (object keys, or array indexes, of the
//!   state's JSON), pretty-printed with its keys sorted, or `absent`.
//! - `reload`: replaces the state by the decoding of its encoding, as a node that restarts from
//!   a snapshot, so that derived indexes are rebuilt; the output is the digest, which must not
//!   change.
//!
//! The digest is the first 16 hex digits of the SHA-256 of the state's version-1 (JSON) encoding: the state
//! is all `BTreeMap`s, so its encoding is deterministic (this test also checks that the
//! encoding decodes to an equal state and encodes to the same bytes again, after every apply).
//! Every apply is also checked against the store's contract: a record whose value changed must
//! be among the touched keys, or the store would not write it. A record that changed without
//! being touched is printed as `NOT PERSISTED: key`, so that it shows in the expected output.
//!
//! `DATADRIVEN_REWRITE=1 cargo test -p flowctl-state --test datadriven` rewrites the expected
//! outputs from what the code does; read the diff before checking it in.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_state::{codec, Command, Outcome, State, Touched};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const REWRITE_VAR: &str = "DATADRIVEN_REWRITE";
const SEPARATOR: &str = "----";

// ---------------------------------------------------------------------------------------------
// Parsing and rewriting scripts.

/// One directive with its input and expected output.
#[derive(Debug)]
struct Block {
    /// 1-based line number of the directive.
    line: usize,
    directive: String,
    input: Vec<String>,
    expected: Vec<String>,
}

/// A script: blocks, and the comment and blank lines between them, kept for rewriting.
#[derive(Debug)]
enum Item {
    Verbatim(String),
    Block(Block),
}

fn parse(path: &Path, text: &str) -> Vec<Item> {
    let lines: Vec<&str> = text.lines().collect();
    let mut items = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() || line.starts_with('#') {
            items.push(Item::Verbatim(line.to_owned()));
            i += 1;
            continue;
        }
        let start = i + 1;
        let directive = line.trim().to_owned();
        i += 1;
        let mut input = Vec::new();
        while i < lines.len() && lines[i] != SEPARATOR {
            assert!(
                !lines[i].trim().is_empty(),
                "{}:{}: blank line before the `{SEPARATOR}` of the block at line {start}",
                path.display(),
                i + 1
            );
            input.push(lines[i].to_owned());
            i += 1;
        }
        assert!(
            i < lines.len(),
            "{}:{start}: the block has no `{SEPARATOR}` line",
            path.display()
        );
        i += 1;
        let mut expected = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() {
            expected.push(lines[i].to_owned());
            i += 1;
        }
        items.push(Item::Block(Block {
            line: start,
            directive,
            input,
            expected,
        }));
    }
    items
}

/// The script with each block's expected output replaced by `actual`.
fn render_script(items: &[Item], actual: &[Vec<String>]) -> String {
    let mut out = String::new();
    let mut outputs = actual.iter();
    for item in items {
        match item {
            Item::Verbatim(l) => {
                out.push_str(l);
                out.push('\n');
            }
            Item::Block(b) => {
                out.push_str(&b.directive);
                out.push('\n');
                for l in &b.input {
                    out.push_str(l);
                    out.push('\n');
                }
                out.push_str(SEPARATOR);
                out.push('\n');
                for l in outputs.next().unwrap() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// A line-by-line diff of the expected and actual outputs, marking what differs.
fn line_diff(expected: &[String], actual: &[String]) -> String {
    let mut out = String::new();
    for i in 0..expected.len().max(actual.len()) {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if e == a => out.push_str(&format!("    {e}\n")),
            (e, a) => {
                if let Some(e) = e {
                    out.push_str(&format!("  - {e}\n"));
                }
                if let Some(a) = a {
                    out.push_str(&format!("  + {a}\n"));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Running a script.

/// The state's digest: the first 16 hex digits of the SHA-256 of its version-1 (JSON)
/// encoding, which spells every field out, so the digests stay those of the scripts whatever
/// the encoding written now.
fn digest(state: &State) -> String {
    let bytes = codec::encode_v1("state", state).unwrap();
    let hash = Sha256::digest(&bytes);
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

/// Every record of the state, keyed as `apply` names them in `Touched`, with the encoding of
/// what the store writes for it. Kept in step with `flowctl-store`'s `sm_store.rs`.
fn records(s: &State) -> BTreeMap<Touched, String> {
    let mut r = BTreeMap::new();
    for (k, v) in &s.pipelines {
        r.insert(Touched::Pipeline(k.clone()), json(v));
    }
    for id in &s.removed_nodes {
        r.insert(Touched::RemovedNode(*id), json(id));
    }
    for (k, v) in &s.components {
        r.insert(Touched::Component(k.clone()), json(v));
    }
    for (k, v) in &s.placements {
        r.insert(Touched::Placement(k.clone()), json(v));
    }
    for (k, v) in &s.runtime {
        r.insert(Touched::Runtime(k.clone()), json(v));
    }
    for (k, v) in &s.schemas.subjects {
        r.insert(Touched::Subject(k.clone()), json(v));
    }
    for (k, v) in &s.schemas.schemas {
        r.insert(Touched::Schema(*k), json(v));
    }
    r.insert(Touched::SchemaMeta, json(&s.schemas.meta));
    for (k, v) in &s.dlq.entries {
        r.insert(Touched::DlqEntry(k.clone()), json(v));
    }
    for (k, v) in &s.dlq.offsets {
        r.insert(Touched::DlqOffset(k.clone()), json(v));
    }
    for (k, v) in &s.replays.jobs {
        r.insert(Touched::ReplayJob(k.clone()), json(v));
    }
    for (job, chunks) in &s.replays.chunks {
        for (i, c) in chunks {
            r.insert(Touched::ReplayChunk(job.clone(), *i), json(c));
        }
    }
    r.insert(
        Touched::AuthMeta,
        json(&serde_json::json!({"enabled": s.auth.enabled, "revision": s.auth.revision})),
    );
    for (k, v) in &s.auth.tokens {
        r.insert(Touched::Token(k.clone()), json(v));
    }
    for (k, v) in &s.audit.records {
        r.insert(Touched::AuditRecord(*k), json(v));
    }
    r.insert(
        Touched::AuditMeta,
        json(&serde_json::json!({"next_seq": s.audit.next_seq})),
    );
    for (k, v) in &s.requests.by_id {
        r.insert(Touched::Request(k.clone()), json(v));
    }
    r
}

/// The records that differ between `before` and `after` but are not among `touched`: the
/// store writes only touched records, so these changes would be lost on a restart.
fn unpersisted(
    before: &BTreeMap<Touched, String>,
    after: &BTreeMap<Touched, String>,
    touched: &[Touched],
) -> Vec<Touched> {
    let touched: BTreeSet<&Touched> = touched.iter().collect();
    let keys: BTreeSet<&Touched> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k) && !touched.contains(*k))
        .cloned()
        .collect()
}

fn render_outcome(o: &Outcome, out: &mut Vec<String>) {
    match o {
        Outcome::Batch(outs) => {
            out.push(format!("outcome: Batch of {}", outs.len()));
            for (i, o) in outs.iter().enumerate() {
                out.push(format!("  [{i}] {}", json(o)));
            }
        }
        o => out.push(format!("outcome: {}", json(o))),
    }
}

fn render_touched(t: &Touched) -> String {
    format!("{t:?}")
}

struct Runner {
    state: State,
    next_index: u64,
}

impl Runner {
    fn run(&mut self, at: &str, b: &Block) -> Vec<String> {
        let mut words = b.directive.split_whitespace();
        let name = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        match name {
            "apply" => self.apply(at, b, &args),
            "show" => {
                assert!(b.input.is_empty(), "{at}: `show` takes no input");
                self.show(&args)
            }
            "reload" => {
                assert!(
                    b.input.is_empty() && args.is_empty(),
                    "{at}: `reload` takes nothing"
                );
                let before = digest(&self.state);
                let bytes = codec::encode_state(&self.state).unwrap();
                self.state = codec::decode_state(&bytes).unwrap();
                let after = digest(&self.state);
                assert_eq!(before, after, "{at}: reloading changed the state");
                vec![format!("state: {after}")]
            }
            other => panic!("{at}: unknown directive {other:?}"),
        }
    }

    fn apply(&mut self, at: &str, b: &Block, args: &[&str]) -> Vec<String> {
        let mut index = self.next_index;
        let mut show_records = false;
        for a in args {
            match a.split_once('=') {
                Some(("index", n)) => {
                    index = n
                        .parse()
                        .unwrap_or_else(|e| panic!("{at}: index {n:?}: {e}"))
                }
                None if *a == "records" => show_records = true,
                _ => panic!("{at}: unknown argument {a:?} of `apply`"),
            }
        }
        self.next_index = index + 1;
        let text = b.input.join("\n");
        let cmd: Command = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{at}: the input is not a command: {e}\n{text}"));
        // The script's JSON is the codec's JSON: it goes through the versioned decoding too.
        let mut framed = vec![codec::V1];
        framed.extend_from_slice(text.as_bytes());
        assert_eq!(codec::decode_command(&framed).unwrap(), cmd, "{at}");

        let before = records(&self.state);
        let (outcome, touched) = flowctl_state::apply(&mut self.state, index, &cmd);
        let after = records(&self.state);

        // Snapshots must round-trip, byte for byte, at every step.
        let bytes = codec::encode_state(&self.state).unwrap();
        let back = codec::decode_state(&bytes).unwrap();
        assert_eq!(back, self.state, "{at}: the state does not round-trip");
        assert_eq!(
            codec::encode_state(&back).unwrap(),
            bytes,
            "{at}: the state's encoding is not canonical"
        );
        // So must the outcome, which a forwarding node sends back and `Once` remembers.
        let o = codec::encode_outcome(&outcome).unwrap();
        assert_eq!(codec::decode_outcome(&o).unwrap(), outcome, "{at}");

        let mut out = Vec::new();
        render_outcome(&outcome, &mut out);
        if touched.is_empty() {
            out.push("touched: none".into());
        } else {
            let t: Vec<String> = touched.iter().map(render_touched).collect();
            out.push(format!("touched: {}", t.join(", ")));
        }
        for k in unpersisted(&before, &after, &touched) {
            out.push(format!("NOT PERSISTED: {}", render_touched(&k)));
        }
        let touched_set: BTreeSet<&Touched> = touched.iter().collect();
        if show_records {
            for t in &touched_set {
                match after.get(*t) {
                    Some(v) => out.push(format!("record {} = {v}", render_touched(t))),
                    None => out.push(format!("record {} deleted", render_touched(t))),
                }
            }
        }
        out.push(format!("state: {}", digest(&self.state)));
        out
    }

    fn show(&self, path: &[&str]) -> Vec<String> {
        let mut v: serde_json::Value = serde_json::to_value(&self.state).unwrap();
        for p in path {
            let next = match &v {
                serde_json::Value::Object(m) => m.get(*p).cloned(),
                serde_json::Value::Array(a) => {
                    p.parse::<usize>().ok().and_then(|i| a.get(i).cloned())
                }
                _ => None,
            };
            match next {
                Some(n) => v = n,
                None => return vec!["absent".into()],
            }
        }
        serde_json::to_string_pretty(&v)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Runs one script; returns its failures, each naming the file and line.
fn run_file(path: &Path, rewrite: bool) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let items = parse(path, &text);
    let mut runner = Runner {
        state: State::default(),
        next_index: 1,
    };
    let mut actual = Vec::new();
    let mut failures = Vec::new();
    for item in &items {
        let Item::Block(b) = item else { continue };
        let at = format!("{}:{}", path.display(), b.line);
        let out = runner.run(&at, b);
        assert!(
            out.iter().all(|l| !l.trim().is_empty()),
            "{at}: an output must not have blank lines"
        );
        if out != b.expected {
            failures.push(format!(
                "{at}: `{}` gave another output (- expected, + actual):\n{}",
                b.directive,
                line_diff(&b.expected, &out)
            ));
        }
        actual.push(out);
    }
    if rewrite {
        let new = render_script(&items, &actual);
        if new != text {
            std::fs::write(path, new).unwrap();
        }
        return Vec::new();
    }
    failures
}

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
}

#[test]
fn state_machine_scripts_give_their_expected_outputs() {
    let rewrite = std::env::var(REWRITE_VAR).is_ok_and(|v| v == "1");
    let files = scripts();
    assert!(!files.is_empty(), "no scripts in tests/testdata");
    let failures: Vec<String> = files.iter().flat_map(|f| run_file(f, rewrite)).collect();
    assert!(
        failures.is_empty(),
        "{} block(s) differ (rewrite with {REWRITE_VAR}=1, then read the diff):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_wrong_expected_output_fails_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.txt");
    std::fs::write(
        &path,
        "# comment\n\napply index=1\n{\"DeletePipeline\":{\"name\":\"nope\"}}\n----\noutcome: wrong\n",
    )
    .unwrap();
    let failures = run_file(&path, false);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].starts_with(&format!("{}:3:", path.display())),
        "{}",
        failures[0]
    );
    assert!(
        failures[0].contains("  - outcome: wrong"),
        "{}",
        failures[0]
    );
    // Rewriting fixes it and keeps the comment.
    assert!(run_file(&path, true).is_empty());
    let fixed = std::fs::read_to_string(&path).unwrap();
    assert!(fixed.starts_with("# comment\n\napply index=1\n"), "{fixed}");
    assert!(fixed.contains("outcome: {\"Rejected\""), "{fixed}");
    assert!(run_file(&path, false).is_empty());
}

#[test]
fn a_change_without_a_touched_key_is_reported_as_not_persisted() {
    let before = records(&State::default());
    let mut s = State::default();
    flowctl_state::apply(
        &mut s,
        1,
        &serde_json::from_str(r#"{"RecordNodeRemoved":{"node_id":3}}"#).unwrap(),
    );
    let after = records(&s);
    let node = Touched::RemovedNode(flowctl_state::NodeId(3));
    assert_eq!(unpersisted(&before, &after, &[]), vec![node.clone()]);
    assert!(unpersisted(&before, &after, &[node]).is_empty());
    // A touched key whose record did not change is only an extra write: not reported.
    assert!(unpersisted(&after, &after, &[Touched::AuthMeta]).is_empty());
}
