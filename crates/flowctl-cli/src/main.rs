//! The `flowctl` command-line tool. `flowctl server` runs a node; every other command is a
//! client of any node of a cluster.

mod commands;
mod dev_cmd;
mod dlq_cmds;
mod output;
mod replay_cmds;
mod schema_cmds;
mod server_cmd;
mod spec_cmds;

use clap::{Parser, Subcommand, ValueEnum};
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
    Server(server_cmd::ServerArgs),
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
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        what: ClusterCmd,
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
    /// A local development environment: cluster, broker, example pipeline.
    Dev {
        #[command(subcommand)]
        what: dev_cmd::DevCmd,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            Command::Server(args) => server_cmd::run(args).await,
            Command::Logs(a) => commands::logs(&cli.global, &a).await,
            Command::Apply {
                file,
                dry_run,
                allow_unregistered_types,
            } => commands::apply(&cli.global, &file, dry_run, allow_unregistered_types).await,
            Command::Schemas { what } => schema_cmds::run(&cli.global, what).await,
            Command::Dev { what } => dev_cmd::run(&cli.global, what).await,
            Command::Dlq { what } => dlq_cmds::run(&cli.global, what).await,
            Command::Replay(args) => replay_cmds::run(&cli.global, args).await,
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
            // One line: the chain of causes joined with ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
