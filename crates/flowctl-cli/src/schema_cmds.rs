//! `flowctl schemas ...`: the schema registry. `.proto` files are compiled here, on the
//! client, with protox; the server gets the descriptor set and the source text.

use crate::commands::{client, consistency, note_stale, now_ms, rfc3339, status_err, ts_ms};
use crate::output::{age, print};
use crate::{Format, Global};
use anyhow::Context as _;
use clap::Subcommand;
use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::schema_service_client::SchemaServiceClient;
use flowctl_client::{AuthChannel, MAX_REPLY_BYTES};
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum SchemasCmd {
    /// Register every message of a package as a subject (a new version when it changed).
    Push(PushArgs),
    /// Check compatibility like `push`, without writing anything.
    Check(PushArgs),
    /// Every subject: latest version, id, compatibility mode, last update.
    #[command(alias = "list")]
    Ls,
    /// One version of a subject.
    Get {
        subject: String,
        /// A version number or `latest`.
        #[arg(long, default_value = "latest")]
        version: String,
    },
    /// What changed in a subject between two versions.
    Diff {
        subject: String,
        #[arg(long)]
        from: u32,
        #[arg(long)]
        to: u32,
    },
    /// Soft-delete a subject (or one version); `--permanent` then deletes it for good.
    Delete {
        subject: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        permanent: bool,
    },
    /// Show or set the compatibility mode of a subject, or of the registry when none is named.
    Config {
        subject: Option<String>,
        /// NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or
        /// FULL_TRANSITIVE.
        #[arg(long)]
        compatibility: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The .proto files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The package whose messages become subjects.
    #[arg(long)]
    pub package: String,
    /// Where imports are looked up (the files' own directories when none is given); the
    /// well-known types are built in.
    #[arg(short = 'I', long = "include")]
    pub include: Vec<PathBuf>,
}

fn schemas(ch: AuthChannel) -> SchemaServiceClient<AuthChannel> {
    SchemaServiceClient::new(ch)
        .max_decoding_message_size(MAX_REPLY_BYTES)
        .max_encoding_message_size(MAX_REPLY_BYTES)
}

pub async fn run(g: &Global, cmd: SchemasCmd) -> anyhow::Result<()> {
    match cmd {
        SchemasCmd::Push(a) => push(g, &a, false).await,
        SchemasCmd::Check(a) => push(g, &a, true).await,
        SchemasCmd::Ls => list(g).await,
        SchemasCmd::Get { subject, version } => get(g, &subject, &version).await,
        SchemasCmd::Diff { subject, from, to } => diff(g, &subject, from, to).await,
        SchemasCmd::Delete {
            subject,
            version,
            permanent,
        } => delete(g, &subject, version, permanent).await,
        SchemasCmd::Config {
            subject,
            compatibility,
        } => config(g, subject.as_deref(), compatibility.as_deref()).await,
    }
}

async fn push(g: &Global, a: &PushArgs, dry_run: bool) -> anyhow::Result<()> {
    let compiled = flowctl_schema::compile(&a.files, &a.include)?;
    // The server would refuse these too; saying so here names the local problem plainly.
    let subjects = flowctl_schema::subjects(&compiled, &a.package)?;
    for s in &subjects {
        flowctl_schema::check_size(s)?;
    }
    let req = pb::PushSchemasRequest {
        package: a.package.clone(),
        descriptor_set: compiled.encoded().to_vec(),
        sources: compiled
            .sources()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        dry_run,
    };
    let c = client(g)?;
    let resp = c
        .call(|ch| {
            let req = req.clone();
            async move { schemas(ch).push(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    for v in &resp.violations {
        let against = if v.against_version > 0 {
            format!(" (against version {})", v.against_version)
        } else {
            String::new()
        };
        eprintln!(
            "{}:{}:{}: {}: {} {}: {}{against}",
            v.file, v.line, v.column, v.rule, v.subject, v.path, v.message
        );
    }
    let value = Value::Array(
        resp.results
            .iter()
            .map(|r| {
                json!({
                    "subject": r.subject,
                    "version": r.version,
                    "id": r.id,
                    "changed": r.changed,
                    "compatibility": r.compatibility,
                })
            })
            .collect(),
    );
    if !resp.accepted {
        anyhow::bail!(
            "{} refused: {} compatibility violation(s) in package {}",
            if dry_run { "check" } else { "push" },
            resp.violations.len(),
            a.package
        );
    }
    print(g.output, &value, |_| {
        let mut rows = vec![vec![
            "SUBJECT".to_owned(),
            "VERSION".to_owned(),
            "ID".to_owned(),
            "RESULT".to_owned(),
            "COMPATIBILITY".to_owned(),
        ]];
        for r in &resp.results {
            let result = match (dry_run, r.changed) {
                (false, true) => "registered",
                (false, false) => "unchanged",
                (true, true) => "compatible (would register)",
                (true, false) => "unchanged",
            };
            rows.push(vec![
                r.subject.clone(),
                if r.version == 0 {
                    "-".into()
                } else {
                    r.version.to_string()
                },
                if r.id == 0 {
                    "-".into()
                } else {
                    r.id.to_string()
                },
                result.to_owned(),
                r.compatibility.clone(),
            ]);
        }
        rows
    })?;
    if matches!(g.output, Format::Table | Format::Wide) {
        let changed = resp.results.iter().filter(|r| r.changed).count();
        println!(
            "{} subject(s) in {}: {} {}, {} unchanged",
            resp.results.len(),
            a.package,
            changed,
            if dry_run {
                "compatible changes"
            } else {
                "new versions"
            },
            resp.results.len() - changed
        );
    }
    Ok(())
}

async fn list(g: &Global) -> anyhow::Result<()> {
    let c = client(g)?;
    let req = pb::ListSubjectsRequest {
        consistency: consistency(g),
    };
    let resp = c
        .call(|ch| async move { schemas(ch).list_subjects(req).await })
        .await
        .map_err(status_err)?
        .into_inner();
    note_stale(g, &resp.meta);
    let value = Value::Array(
        resp.subjects
            .iter()
            .map(|s| {
                json!({
                    "subject": s.subject,
                    "package": s.package,
                    "latest_version": s.latest_version,
                    "id": s.latest_id,
                    "compatibility": s.compatibility,
                    "updated_at": rfc3339(ts_ms(&s.updated_at)),
                    "versions": s.versions,
                    "deleted_versions": s.deleted_versions,
                })
            })
            .collect(),
    );
    let now = now_ms();
    print(g.output, &value, |wide| {
        let mut head = vec![
            "SUBJECT",
            "LATEST VERSION",
            "ID",
            "COMPATIBILITY",
            "UPDATED",
        ];
        if wide {
            head.extend(["PACKAGE", "VERSIONS"]);
        }
        let mut rows = vec![head.into_iter().map(str::to_owned).collect::<Vec<_>>()];
        for s in &resp.subjects {
            let mut row = vec![
                s.subject.clone(),
                if s.latest_version == 0 {
                    "- (deleted)".into()
                } else {
                    s.latest_version.to_string()
                },
                if s.latest_id == 0 {
                    "-".into()
                } else {
                    s.latest_id.to_string()
                },
                s.compatibility.clone(),
                age(ts_ms(&s.updated_at), now),
            ];
            if wide {
                row.push(s.package.clone());
                row.push(
                    s.versions
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
            rows.push(row);
        }
        rows
    })
}

async fn fetch(g: &Global, subject: &str, version: u32) -> anyhow::Result<pb::GetSchemaResponse> {
    let c = client(g)?;
    let req = pb::GetSchemaRequest {
        subject: subject.to_owned(),
        version,
        consistency: consistency(g),
    };
    Ok(c.call(|ch| {
        let req = req.clone();
        async move { schemas(ch).get_schema(req).await }
    })
    .await
    .map_err(status_err)?
    .into_inner())
}

fn subject_schema(r: &pb::GetSchemaResponse) -> flowctl_schema::SubjectSchema {
    flowctl_schema::SubjectSchema {
        subject: r.subject.clone(),
        package: r.package.clone(),
        file: r.file.clone(),
        source: r.source.clone(),
        descriptor_set: r.descriptor_set.clone(),
    }
}

async fn get(g: &Global, subject: &str, version: &str) -> anyhow::Result<()> {
    let version = match version {
        "latest" => 0,
        v => v.parse::<u32>().ok().filter(|v| *v > 0).with_context(|| {
            format!("--version: {v:?} is neither a version number nor `latest`")
        })?,
    };
    let r = fetch(g, subject, version).await?;
    note_stale(g, &r.meta);
    match g.output {
        Format::Proto => print!("{}", r.source),
        Format::Descriptor => std::io::stdout()
            .write_all(&r.descriptor_set)
            .context("cannot write the descriptor set")?,
        Format::Json | Format::Yaml => {
            let mut v = json!({
                "subject": r.subject,
                "version": r.version,
                "id": r.id,
                "fingerprint": r.fingerprint,
                "package": r.package,
                "file": r.file,
                "registered_at": rfc3339(ts_ms(&r.registered_at)),
            });
            // JSON carries the descriptors; YAML, for people, the source.
            if g.output == Format::Json {
                v["descriptor"] = flowctl_schema::descriptor_json(&subject_schema(&r))?;
            } else {
                v["source"] = json!(r.source);
            }
            print(g.output, &v, |_| Vec::new())?;
        }
        Format::Table | Format::Wide => {
            println!("Subject:      {}", r.subject);
            println!("Version:      {}", r.version);
            println!("ID:           {}", r.id);
            println!("Package:      {}", r.package);
            println!("File:         {}", r.file);
            println!("Registered:   {}", rfc3339(ts_ms(&r.registered_at)));
            println!("Fingerprint:  {}", r.fingerprint);
            println!("Source:");
            for l in r.source.lines() {
                println!("  {l}");
            }
        }
    }
    Ok(())
}

async fn diff(g: &Global, subject: &str, from: u32, to: u32) -> anyhow::Result<()> {
    if from == 0 || to == 0 {
        anyhow::bail!("--from and --to are version numbers, starting at 1");
    }
    let a = fetch(g, subject, from).await?;
    let b = fetch(g, subject, to).await?;
    let changes = flowctl_schema::diff(&subject_schema(&a), &subject_schema(&b))?;
    let value = Value::Array(
        changes
            .iter()
            .map(|c| {
                json!({
                    "kind": format!("{:?}", c.kind).to_lowercase(),
                    "path": c.path,
                    "description": c.description,
                })
            })
            .collect(),
    );
    match g.output {
        Format::Table | Format::Wide => {
            println!(
                "{subject}: version {from} (id {}) → version {to} (id {})",
                a.id, b.id
            );
            if changes.is_empty() {
                println!("  no changes");
            }
            for c in &changes {
                println!("  {c}");
            }
            Ok(())
        }
        f => print(f, &value, |_| Vec::new()),
    }
}

async fn delete(
    g: &Global,
    subject: &str,
    version: Option<u32>,
    permanent: bool,
) -> anyhow::Result<()> {
    let c = client(g)?;
    let req = pb::DeleteSchemaRequest {
        subject: subject.to_owned(),
        version: version.unwrap_or(0),
        permanent,
    };
    let resp = c
        .call(|ch| {
            let req = req.clone();
            async move { schemas(ch).delete_schema(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let versions = resp
        .versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "subject/{subject} version(s) {versions} {}",
        if permanent {
            "permanently deleted"
        } else {
            "soft-deleted"
        }
    );
    Ok(())
}

async fn config(g: &Global, subject: Option<&str>, mode: Option<&str>) -> anyhow::Result<()> {
    let c = client(g)?;
    let name = subject.unwrap_or_default().to_owned();
    let what = subject.map_or("the registry".to_owned(), |s| format!("subject/{s}"));
    match mode {
        Some(m) => {
            let req = pb::SetCompatibilityRequest {
                subject: name,
                mode: m.to_owned(),
            };
            let resp = c
                .call(|ch| {
                    let req = req.clone();
                    async move { schemas(ch).set_compatibility(req).await }
                })
                .await
                .map_err(status_err)?
                .into_inner();
            println!("{what}: compatibility {}", resp.mode);
        }
        None => {
            let req = pb::GetCompatibilityRequest { subject: name };
            let resp = c
                .call(|ch| {
                    let req = req.clone();
                    async move { schemas(ch).get_compatibility(req).await }
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let v = json!({"compatibility": resp.mode, "inherited": resp.inherited});
            match g.output {
                Format::Table | Format::Wide => println!(
                    "{what}: compatibility {}{}",
                    resp.mode,
                    if resp.inherited && subject.is_some() {
                        " (from the registry)"
                    } else if resp.inherited {
                        " (default)"
                    } else {
                        ""
                    }
                ),
                f => print(f, &v, |_| Vec::new())?,
            }
        }
    }
    Ok(())
}
