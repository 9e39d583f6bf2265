//! The `flowctl` command-line tool. `flowctl server` runs a node; every other command is a
//! client of any node of a cluster.

mod audit_cmds;
mod auth_cmds;
mod certs_cmds;
mod commands;
mod credentials;
mod dev;
mod dlq_cmds;
mod output;
mod replay_cmds;
mod schema_cmds;
mod server_cmd;
mod spec_cmds;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "flowctl",
    version,
    about = "Control plane for streaming data pipelines"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Comma-separated control-plane endpoints; the next one is tried when one is down.
    #[arg(long, global = true, env = "FLOWCTL_ENDPOINTS", default_value = flowctl_client::DEFAULT_ENDPOINT)]
    pub endpoints: String,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Read consistency: `linearizable` (default) or `stale` (the serving node's local state).
    #[arg(long, global = true, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Give up after this many seconds (including retries and failover).
    #[arg(long, global = true, default_value_t = 15)]
    pub timeout: u64,
    /// Bearer token sent on every call [env: FLOWCTL_TOKEN]. Other local users can see a
    /// command line, so prefer FLOWCTL_TOKEN or --token-file; `--token ""` sends none.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<credentials::Secret>,
    /// Read the bearer token from FILE, its content trimmed [env: FLOWCTL_TOKEN_FILE].
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

/// Client TLS, for every command that calls a cluster except `flowctl dev` (its environment is
/// plaintext on loopback). An `https://` endpoint always uses TLS, trusting the platform's
/// roots unless --cacert is given; any of these flags also switches bare `host:port` endpoints
/// to TLS; an `http://` endpoint never uses it. Apart from [`Global`], which other modules
/// build field by field; `main` hands them to `credentials::set_tls`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Verify TLS servers with the CA certificates in FILE (PEM) instead of the platform's.
    #[arg(long, global = true, env = flowctl_client::ENV_CACERT, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Present the client certificate in FILE (PEM) to TLS servers (mTLS); needs --key.
    #[arg(long, global = true, env = flowctl_client::ENV_CERT, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, global = true, env = flowctl_client::ENV_KEY, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
    /// A schema's .proto source (`schemas get`).
    Proto,
    /// A schema's encoded FileDescriptorSet, binary (`schemas get`).
    Descriptor,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Stale,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a control-plane node.
    Server(Box<server_cmd::ServerArgs>),
    /// Store a pipeline document (create or update).
    Apply {
        /// A YAML file, a directory of them, or "-" for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Validate and show what would change, without storing anything.
        #[arg(long)]
        dry_run: bool,
        /// Accept event types that are not registered schema subjects.
        #[arg(long)]
        allow_unregistered_types: bool,
        /// Store only if the pipeline is at this generation now (0: only if it does not exist
        /// yet): a safe read-modify-write. One document only.
        #[arg(long, value_name = "N")]
        if_generation: Option<u64>,
    },
    /// Replay a ledger range through a pipeline's source, in chunks, resumably.
    Replay(replay_cmds::ReplayArgs),
    /// The dead-letter index: list, show, replay and discard failed records.
    Dlq {
        #[command(subcommand)]
        what: dlq_cmds::DlqCmd,
    },
    /// The schema registry: push, check, list, get, diff, delete, compatibility modes.
    Schemas {
        #[command(subcommand)]
        what: schema_cmds::SchemasCmd,
    },
    /// Registered components and their health (same as `get components`).
    List(commands::ComponentFilter),
    /// Show one component in detail.
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Output of a component's instances, from whichever node runs them.
    Logs(commands::LogsArgs),
    /// Show resources.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Delete a resource.
    Delete {
        #[command(subcommand)]
        what: DeleteWhat,
    },
    /// The audit log of accepted writes (admin only).
    Audit {
        #[command(subcommand)]
        what: audit_cmds::AuditCmd,
    },
    /// Bearer tokens (create, ls, revoke) and whoami.
    Auth {
        #[command(subcommand)]
        what: auth_cmds::AuthCmd,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        what: ClusterCmd,
    },
    /// TLS certificates for a cluster: a CA, node certificates and an admin client certificate.
    Certs {
        #[command(subcommand)]
        what: certs_cmds::CertsCmd,
    },
    /// Check a pipeline file offline and print every problem with its line:column.
    Validate {
        /// The YAML file ("-" reads standard input).
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Print the JSON Schema of a document kind, for editors.
    Schema {
        #[arg(value_enum)]
        kind: spec_cmds::SchemaKind,
    },
    /// Draw a pipeline file's DAG (offline) as SVG, DOT, Mermaid or text.
    Graph(spec_cmds::GraphArgs),
    /// Write the manifests that run a pipeline elsewhere (offline): `--target kubernetes`.
    Render(spec_cmds::RenderArgs),
    /// A local development environment: cluster, broker, example pipeline.
    Dev {
        #[command(subcommand)]
        what: dev::DevCmd,
    },
    /// Started by a server whose node may run containers: waits until its standard input
    /// closes (the server is gone), then removes the containers of that server's run.
    #[command(hide = true)]
    ContainerReaper {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        node: u64,
        #[arg(long)]
        run: String,
    },
}

#[derive(Subcommand, Debug)]
enum GetWhat {
    /// All pipelines.
    #[command(alias = "pipeline-list")]
    Pipelines,
    /// One pipeline by name.
    Pipeline { name: String },
    /// Registered components and their health.
    Components(commands::ComponentFilter),
}

#[derive(Subcommand, Debug)]
enum DescribeWhat {
    /// One component by id.
    Component { id: String },
    /// One pipeline: spec, status and placements.
    Pipeline { name: String },
}

#[derive(Subcommand, Debug)]
enum DeleteWhat {
    /// One pipeline by name.
    Pipeline { name: String },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Every member's id, address, role, term, leader, commit and applied index.
    Status,
    /// The members and their roles.
    Members,
    /// Demote and remove a member. Its id can never rejoin.
    Remove { node_id: u64 },
    /// Hand leadership to a member.
    TransferLeader { node_id: u64 },
}

/// A reader that leaves early (`flowctl get pipelines | head -1`) closes the pipe: `println!`
/// then panics with EPIPE. End quietly instead, with the status a process killed by SIGPIPE
/// has (128 + 13), as other command-line tools do.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Dev { .. }) {
        credentials::set_tls(cli.tls.clone());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server_cmd::run(*args).await,
            Command::ContainerReaper { cluster, node, run } => {
                flowctl_server::deploy::run_reaper(&cluster, node, &run)
                    .await
                    .map(|removed| {
                        if removed > 0 {
                            eprintln!(
                                "container-reaper: removed {removed} container(s) of node {node} (run {run})"
                            );
                        }
                    })
                    .map_err(anyhow::Error::from)
            }
            Command::Logs(a) => commands::logs(&cli.global, &a).await,
            Command::Apply {
                file,
                dry_run,
                allow_unregistered_types,
                if_generation,
            } => {
                let opts = commands::ApplyOptions {
                    dry_run,
                    allow_unregistered_types,
                    if_generation,
                };
                commands::apply(&cli.global, &file, &opts).await
            }
            Command::Schemas { what } => schema_cmds::run(&cli.global, what).await,
            Command::Dev { what } => dev::run(&cli.global, what).await,
            Command::Dlq { what } => dlq_cmds::run(&cli.global, what).await,
            Command::Replay(args) => replay_cmds::run(&cli.global, args).await,
            Command::Auth { what } => auth_cmds::run(&cli.global, what).await,
            Command::Audit { what } => audit_cmds::run(&cli.global, what).await,
            Command::Get {
                what: GetWhat::Pipelines,
            } => commands::get_pipelines(&cli.global).await,
            Command::Get {
                what: GetWhat::Pipeline { name },
            } => commands::get_pipeline(&cli.global, &name).await,
            Command::Get {
                what: GetWhat::Components(f),
            }
            | Command::List(f) => commands::list_components(&cli.global, &f).await,
            Command::Describe {
                what: DescribeWhat::Component { id },
            } => commands::describe_component(&cli.global, &id).await,
            Command::Describe {
                what: DescribeWhat::Pipeline { name },
            } => commands::describe_pipeline(&cli.global, &name).await,
            Command::Delete {
                what: DeleteWhat::Pipeline { name },
            } => commands::delete_pipeline(&cli.global, &name).await,
            Command::Validate { file } => spec_cmds::validate(&cli.global, &file),
            Command::Schema { kind } => spec_cmds::schema(kind),
            Command::Certs { what } => certs_cmds::run(&cli.global, what),
            Command::Render(args) => spec_cmds::render(&args),
            Command::Graph(args) => match &args.pipeline {
                Some(name) => commands::graph_live(&cli.global, name, &args).await,
                None => spec_cmds::graph(&args),
            },
            Command::Cluster { what } => match what {
                ClusterCmd::Status => commands::cluster_status(&cli.global).await,
                ClusterCmd::Members => commands::cluster_members(&cli.global).await,
                ClusterCmd::Remove { node_id } => {
                    commands::cluster_remove(&cli.global, node_id).await
                }
                ClusterCmd::TransferLeader { node_id } => {
                    commands::cluster_transfer(&cli.global, node_id).await
                }
            },
        }
    });
    // The runtime may hold lazily connecting channels; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error as one line: its chain of causes joined with ": ", as `{:#}` does, except that a
/// cause already at the end of the line is not repeated (library errors that put their source
/// in their own message as well, such as "cannot read F: No such file", would otherwise say
/// it twice).
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Clap's own consistency checks, which include a global flag (`--cert`, `--key`) clashing
    /// with a subcommand's.
    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tls_flags_are_global() {
        let cli = Cli::try_parse_from([
            "flowctl",
            "get",
            "pipelines",
            "--cacert",
            "ca.crt",
            "--cert",
            "admin.crt",
            "--key",
            "admin.key",
        ])
        .unwrap();
        let files = [cli.tls.cacert, cli.tls.cert, cli.tls.key];
        let expected = ["ca.crt", "admin.crt", "admin.key"].map(|f| Some(PathBuf::from(f)));
        assert_eq!(files, expected);
    }

    #[test]
    fn an_error_line_says_a_cause_once_even_if_a_message_repeats_it() {
        /// An error that, like many library errors, says its source in its own message too.
        #[derive(Debug)]
        struct Read {
            source: std::io::Error,
        }
        impl std::fmt::Display for Read {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot read f: {}", self.source)
            }
        }
        impl std::error::Error for Read {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.source)
            }
        }
        let e = anyhow::Error::new(Read {
            source: std::io::Error::other("gone"),
        })
        .context("while loading");
        assert_eq!(one_line(&e), "while loading: cannot read f: gone");
        let e = anyhow::anyhow!("a\nb").context("c");
        assert_eq!(one_line(&e), "c: a b");
    }
}
