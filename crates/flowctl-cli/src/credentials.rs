//! The CLI's credentials: where its bearer token comes from (`--token`, `--token-file`,
//! `FLOWCTL_TOKEN` or `FLOWCTL_TOKEN_FILE`), and its client TLS files (`--cacert`, `--cert`,
//! `--key`, or `FLOWCTL_CACERT`, `FLOWCTL_CERT`, `FLOWCTL_KEY`).
//!
//! Flags beat the environment, as everywhere in flowctl. At one level, a token and a token file
//! together are an error rather than a silent choice. `--token ""` means "no token", so a
//! command can run anonymously while `FLOWCTL_TOKEN` is exported; likewise `--cacert ""`. The
//! token never appears in `Debug` output or in an error message.
//!
//! TLS: `main` hands the parsed TLS flags over once, with [`set_tls`], and every client that
//! `commands::client` builds reads them with [`tls`]. They are kept out of `Global` because
//! other modules build a `Global` field by field, and out of `flowctl dev`, whose environment
//! is plaintext on loopback. The files are read, and `--cert` without `--key` is refused, only
//! when a command builds a client, so that a command that calls no cluster (`validate`,
//! `certs init`) is not stopped by an exported variable.

use anyhow::Context as _;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use flowctl_client::TlsSetting;
use tonic::transport::ClientTlsConfig;

use crate::{Global, TlsArgs};

/// The variable that holds a token.
pub const ENV_TOKEN: &str = "FLOWCTL_TOKEN";
/// The variable that names a file holding a token.
pub const ENV_TOKEN_FILE: &str = "FLOWCTL_TOKEN_FILE";

/// A secret given on the command line. `Debug` shows `<set>`, so printing the parsed arguments
/// cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<set>")
    }
}

/// The token every call of this invocation sends, from the flags and the process environment.
pub fn token(g: &Global) -> anyhow::Result<Option<String>> {
    resolve(g.token.as_ref(), g.token_file.as_deref(), |var| {
        std::env::var(var).ok()
    })
}

/// The token from the flags, else from the variables `env` looks up (blank means unset). `None`
/// means no credentials.
pub fn resolve(
    token: Option<&Secret>,
    token_file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<String>> {
    match (token, token_file) {
        (Some(_), Some(_)) => anyhow::bail!("--token and --token-file are both given; use one"),
        (Some(t), None) => return Ok(Some(t.expose().trim().to_owned()).filter(|t| !t.is_empty())),
        (None, Some(path)) => return read_token_file(path).map(Some),
        (None, None) => {}
    }
    let set = |var| env(var).filter(|v: &String| !v.trim().is_empty());
    match (set(ENV_TOKEN), set(ENV_TOKEN_FILE)) {
        (Some(_), Some(_)) => {
            anyhow::bail!("{ENV_TOKEN} and {ENV_TOKEN_FILE} are both set; unset one")
        }
        (Some(t), None) => Ok(Some(t.trim().to_owned())),
        (None, Some(path)) => read_token_file(Path::new(path.trim())).map(Some),
        (None, None) => Ok(None),
    }
}

/// The TLS flags of this invocation, set once by `main`.
static TLS_ARGS: OnceLock<TlsArgs> = OnceLock::new();

/// Makes `args` the TLS flags of every client this invocation builds. Only the first call
/// counts: the flags are parsed once per process.
pub fn set_tls(args: TlsArgs) {
    let _ = TLS_ARGS.set(args);
}

/// The client TLS configuration of this invocation: `None` (plaintext, except `https://`
/// endpoints) unless a TLS flag or variable is set.
pub fn tls() -> anyhow::Result<Option<ClientTlsConfig>> {
    TLS_ARGS.get().map_or(Ok(None), tls_config)
}

/// The client TLS configuration that `args` describe, with errors naming the flag and its
/// variable (either may have given the file).
pub fn tls_config(args: &TlsArgs) -> anyhow::Result<Option<ClientTlsConfig>> {
    Ok(flowctl_client::tls_config(
        TlsSetting {
            name: "--cacert (FLOWCTL_CACERT)",
            path: args.cacert.as_deref(),
        },
        TlsSetting {
            name: "--cert (FLOWCTL_CERT)",
            path: args.cert.as_deref(),
        },
        TlsSetting {
            name: "--key (FLOWCTL_KEY)",
            path: args.key.as_deref(),
        },
    )?)
}

/// A token file's content, trimmed; an unreadable or blank file is an error naming the file.
fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn secret(s: &str) -> Secret {
        Secret(s.to_owned())
    }

    fn file(dir: &tempfile::TempDir, name: &str, content: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn no_flag_and_no_variable_means_no_token() {
        assert_eq!(resolve(None, None, env(&[])).unwrap(), None);
        let blank = env(&[(ENV_TOKEN, " "), (ENV_TOKEN_FILE, "")]);
        assert_eq!(resolve(None, None, blank).unwrap(), None);
    }

    #[test]
    fn the_token_flag_beats_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir, "t", "from-env-file");
        let vars = [(ENV_TOKEN, "from-env")];
        let got = resolve(Some(&secret("from-flag")), None, env(&vars)).unwrap();
        assert_eq!(got.as_deref(), Some("from-flag"));
        let vars = [(ENV_TOKEN_FILE, f.to_str().unwrap())];
        let got = resolve(Some(&secret("from-flag")), None, env(&vars)).unwrap();
        assert_eq!(got.as_deref(), Some("from-flag"));
    }

    #[test]
    fn an_empty_token_flag_sends_no_token_even_with_flowctl_token_set() {
        let got = resolve(Some(&secret("")), None, env(&[(ENV_TOKEN, "from-env")])).unwrap();
        assert_eq!(got, None);
    }

    #[test]
    fn the_token_file_flag_is_read_trimmed_and_beats_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir, "token", "  s3cret\n\n");
        let got = resolve(None, Some(&f), env(&[(ENV_TOKEN, "from-env")])).unwrap();
        assert_eq!(got.as_deref(), Some("s3cret"));
    }

    #[test]
    fn the_environment_gives_a_token_or_a_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir, "token", "from-file\n");
        let got = resolve(None, None, env(&[(ENV_TOKEN, " from-env ")])).unwrap();
        assert_eq!(got.as_deref(), Some("from-env"));
        let got = resolve(None, None, env(&[(ENV_TOKEN_FILE, f.to_str().unwrap())])).unwrap();
        assert_eq!(got.as_deref(), Some("from-file"));
    }

    #[test]
    fn a_token_and_a_token_file_at_one_level_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir, "token", "x");
        let e = resolve(Some(&secret("s3cret")), Some(&f), env(&[])).unwrap_err();
        let msg = format!("{e:#}");
        assert_eq!(msg, "--token and --token-file are both given; use one");
        let vars = [(ENV_TOKEN, "s3cret"), (ENV_TOKEN_FILE, f.to_str().unwrap())];
        let msg = format!("{:#}", resolve(None, None, env(&vars)).unwrap_err());
        assert_eq!(
            msg,
            "FLOWCTL_TOKEN and FLOWCTL_TOKEN_FILE are both set; unset one"
        );
    }

    #[test]
    fn an_unreadable_or_empty_token_file_is_a_one_line_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let msg = format!("{:#}", resolve(None, Some(&missing), env(&[])).unwrap_err());
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "cannot read the token file {}: ",
                missing.display()
            )),
            "{msg}"
        );
        let empty = file(&dir, "empty", " \n\t\n");
        let msg = format!("{:#}", resolve(None, Some(&empty), env(&[])).unwrap_err());
        assert_eq!(msg, format!("the token file {} is empty", empty.display()));
        // The same through FLOWCTL_TOKEN_FILE.
        let vars = [(ENV_TOKEN_FILE, empty.to_str().unwrap())];
        let msg = format!("{:#}", resolve(None, None, env(&vars)).unwrap_err());
        assert_eq!(msg, format!("the token file {} is empty", empty.display()));
    }

    #[test]
    fn a_secret_is_never_printed_by_debug() {
        assert_eq!(format!("{:?}", Some(secret("s3cret"))), "Some(<set>)");
    }

    fn tls_args(cacert: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> TlsArgs {
        TlsArgs {
            cacert: cacert.map(Path::to_path_buf),
            cert: cert.map(Path::to_path_buf),
            key: key.map(Path::to_path_buf),
        }
    }

    #[test]
    fn no_tls_flag_or_only_empty_ones_means_no_tls_configuration() {
        assert!(tls_config(&TlsArgs::default()).unwrap().is_none());
        let empty = Some(Path::new(""));
        assert!(tls_config(&tls_args(empty, empty, empty))
            .unwrap()
            .is_none());
    }

    #[test]
    fn tls_flags_give_a_configuration_and_a_half_identity_is_an_error_naming_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        flowctl_tls::generate(dir.path(), &["127.0.0.1".to_owned()], 1).unwrap();
        let (ca, cert, key) = (
            dir.path().join("ca.crt"),
            dir.path().join("admin.crt"),
            dir.path().join("admin.key"),
        );
        assert!(tls_config(&tls_args(Some(&ca), None, None))
            .unwrap()
            .is_some());
        let all = tls_args(Some(&ca), Some(&cert), Some(&key));
        assert!(tls_config(&all).unwrap().is_some());
        let msg = format!(
            "{:#}",
            tls_config(&tls_args(None, None, Some(&key))).unwrap_err()
        );
        assert_eq!(
            msg,
            "--key (FLOWCTL_KEY) is set but --cert (FLOWCTL_CERT) is not; \
             a client certificate and its key go together"
        );
    }

    #[test]
    fn an_unreadable_ca_is_one_line_naming_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.crt");
        let e = tls_config(&tls_args(Some(&missing), None, None)).unwrap_err();
        let msg = crate::one_line(&e);
        let prefix = format!(
            "cannot use --cacert (FLOWCTL_CACERT): cannot read {}: ",
            missing.display()
        );
        assert!(msg.starts_with(&prefix), "{msg}");
        let cause = &msg[prefix.len()..];
        assert_eq!(msg.matches(cause).count(), 1, "said once: {msg}");
    }
}
