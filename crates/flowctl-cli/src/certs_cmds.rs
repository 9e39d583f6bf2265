//! `flowctl certs`: the certificates of a TLS cluster, written offline by `flowctl_tls::generate`.
//! Nothing here calls a cluster.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;

use crate::{output, Format, Global};

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Write a new CA, a certificate per node (server and peer) and an admin client
    /// certificate (CN flowctl-admin) into a directory. Existing files are never overwritten.
    Init(InitArgs),
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The directory to write into; created if missing.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Comma-separated IP addresses and DNS names that every node certificate names (its
    /// subject alternative names); localhost and 127.0.0.1 are always added.
    #[arg(long, value_name = "HOST,...")]
    hosts: String,
    /// How many node certificates to write: node-1 to node-N.
    #[arg(long, value_name = "N", default_value_t = 3)]
    nodes: usize,
}

pub fn run(g: &Global, what: CertsCmd) -> anyhow::Result<()> {
    match what {
        CertsCmd::Init(a) => init(g, &a),
    }
}

fn init(g: &Global, a: &InitArgs) -> anyhow::Result<()> {
    let hosts = split_hosts(&a.hosts);
    let files = flowctl_tls::generate(&a.dir, &hosts, a.nodes)?;
    match g.output {
        Format::Table | Format::Wide => {
            for f in &files {
                println!("wrote {}", f.display());
            }
            println!();
            for line in hints(&a.dir) {
                println!("{line}");
            }
            Ok(())
        }
        format => {
            let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            output::print(format, &json!({ "files": files }), |_| Vec::new())
        }
    }
}

/// `--hosts` split at commas, each entry trimmed, empty entries dropped (so a trailing comma
/// or `a, b` is fine).
fn split_hosts(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Which flags take the files just written in `dir`.
fn hints(dir: &Path) -> [String; 3] {
    let file = |name: &str| dir.join(name).display().to_string();
    let (node_crt, node_key, ca) = (file("node-1.crt"), file("node-1.key"), file("ca.crt"));
    [
        format!(
            "server (node 1; node N takes node-N.crt and node-N.key): --cert-file {node_crt} --key-file {node_key} --trusted-ca-file {ca} \
             --peer-cert-file {node_crt} --peer-key-file {node_key} --peer-trusted-ca-file {ca}"
        ),
        format!(
            "client: --cacert {ca} [--cert {} --key {}]",
            file("admin.crt"),
            file("admin.key")
        ),
        format!(
            "keep {} secret: whoever has it can issue certificates the cluster trusts",
            file("ca.key")
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_split_at_commas_and_trimmed() {
        assert_eq!(
            split_hosts(" 127.0.0.1, node1.example,,"),
            ["127.0.0.1", "node1.example"]
        );
        assert!(split_hosts(" , ").is_empty());
    }

    #[test]
    fn hints_name_the_server_and_client_flags_with_the_written_paths() {
        let [server, client, _] = hints(Path::new("certs"));
        assert_eq!(
            server,
            "server (node 1; node N takes node-N.crt and node-N.key): \
             --cert-file certs/node-1.crt --key-file certs/node-1.key \
             --trusted-ca-file certs/ca.crt --peer-cert-file certs/node-1.crt \
             --peer-key-file certs/node-1.key --peer-trusted-ca-file certs/ca.crt"
        );
        assert_eq!(
            client,
            "client: --cacert certs/ca.crt [--cert certs/admin.crt --key certs/admin.key]"
        );
    }
}
