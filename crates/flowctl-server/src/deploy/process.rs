//! The `process` driver: each instance is a child process of the node, the leader of its own
//! process group, started with a cleared environment (but [`KEPT_ENV`]) from a program that
//! `--allowed-commands` allows, as the `--run-as` user, and killed when the node dies
//! (`PR_SET_PDEATHSIG`). Stopping it signals the whole group: SIGTERM, then SIGKILL after
//! `STOP_GRACE`. Its stdout and stderr go, line by line with their write time, to its log file
//! ([`log_path`]), rotated at [`LOG_CAP_BYTES`].

use super::supervisor::Desired;
use super::{DeployOptions, STOP_GRACE};
use crate::clock::now_ms;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// A log file is rotated (to `.log.1`) when it grows past this.
pub const LOG_CAP_BYTES: u64 = 8 * 1024 * 1024;

/// The programs the process driver may start: glob patterns over a program's canonical path
/// (symbolic links and `..` resolved), where `*` matches any run of characters (`/` included)
/// and `?` one character. The default is the directory of the running `flowctl` binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedCommands(Vec<String>);

impl AllowedCommands {
    /// Every pattern must be an absolute path pattern, or `*` (anything: the old behaviour).
    pub fn new(patterns: Vec<String>) -> Result<Self, String> {
        if patterns.is_empty() {
            return Err("--allowed-commands must name at least one pattern".into());
        }
        for p in &patterns {
            if p != "*" && !p.starts_with('/') {
                return Err(format!(
                    "--allowed-commands pattern {p:?} must be an absolute path pattern (or *)"
                ));
            }
        }
        Ok(AllowedCommands(patterns))
    }

    /// `<directory of the running flowctl>/*`.
    pub fn beside_flowctl() -> Result<Self, String> {
        let exe = std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(|e| format!("cannot find the flowctl binary's directory: {e}"))?;
        let dir = exe
            .parent()
            .ok_or("the flowctl binary has no directory")?
            .to_string_lossy()
            .into_owned();
        Ok(AllowedCommands(vec![format!("{dir}/*")]))
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }

    /// The pattern that allows `program` (a canonical path), if one does.
    fn allowing(&self, program: &Path) -> Option<&str> {
        let text = program.to_string_lossy();
        self.0
            .iter()
            .find(|p| glob_match(p.as_bytes(), text.as_bytes()))
            .map(String::as_str)
    }
}

/// `*` matches any run of bytes, `?` any one byte; everything else itself.
pub(super) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it has consumed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The uid and gid instances run as (`--run-as USER|UID[:GID]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// A user name (looked up in /etc/passwd) or a numeric uid, with an optional `:GID`
    /// (default: the user's primary group, or the uid's number when it has no entry).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        // name:password:uid:gid:...
        let entry = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let (uid, gid) = (
                f.get(2)?.parse::<u32>().ok()?,
                f.get(3)?.parse::<u32>().ok()?,
            );
            (f[0] == user || user.parse::<u32>() == Ok(uid)).then_some((uid, gid))
        });
        let (uid, primary) = match (entry, user.parse::<u32>()) {
            (Some(e), _) => e,
            (None, Ok(uid)) => (uid, uid),
            (None, Err(_)) => return Err(format!("--run-as: no user {user:?} in /etc/passwd")),
        };
        let gid = match group {
            None => primary,
            Some(g) => g
                .parse::<u32>()
                .map_err(|_| format!("--run-as: group {g:?} must be a numeric gid"))?,
        };
        Ok(RunAs { uid, gid })
    }
}

/// The variables of the node's own environment that instances keep; everything else of the
/// server's environment (credentials, `LD_*`, ...) is withheld from them.
const KEPT_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// An instance run by the process driver: a child process, the leader of its own process
/// group. Dropping it kills the child (`kill_on_drop`).
pub(super) struct ProcessInstance(tokio::process::Child);

impl ProcessInstance {
    /// Starts `d`'s program, its output going to its log file (the pumps run on `tracker`).
    pub(super) async fn start(
        d: &Desired,
        opts: &DeployOptions,
        tracker: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<Self> {
        start_instance(d, opts, tracker).await.map(ProcessInstance)
    }

    /// See [`stop_instance`].
    pub(super) async fn stop(&mut self) {
        stop_instance(&mut self.0).await;
    }

    /// `Some((success, how))` once the child has exited (or cannot be waited for).
    pub(super) fn exited(&mut self) -> Option<(bool, String)> {
        match self.0.try_wait() {
            Ok(Some(status)) => Some((status.success(), exit_text(status))),
            Ok(None) => None,
            Err(e) => Some((false, e.to_string())),
        }
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.0.id()
    }
}

/// The log file of an instance.
pub fn log_path(data_dir: &Path, pipeline: &str, key: &str) -> PathBuf {
    data_dir
        .join("logs")
        .join(pipeline)
        .join(format!("{}.log", key.replace('/', "-")))
}

async fn start_instance(
    d: &Desired,
    opts: &DeployOptions,
    tracker: &tokio_util::task::TaskTracker,
) -> std::io::Result<tokio::process::Child> {
    let path = prepare_log(opts, d).await?;
    let workdir = opts
        .data_dir
        .join("work")
        .join(&d.pipeline)
        .join(d.key.replace('/', "-"));
    tokio::fs::create_dir_all(&workdir).await?;
    let program = allowed_program(d, &opts.allowed)?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.env_clear();
    for k in KEPT_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    if let Some(u) = opts.run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    // Its own process group, so that stopping it reaches the programs it starts too.
    cmd.process_group(0);
    cmd.args(&d.args)
        .envs(
            d.env
                .iter()
                .filter(|(k, _)| !flowctl_spec::is_loader_variable(k)),
        )
        .current_dir(&workdir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
        let tx = log_writer(path, tracker);
        let tx2 = tx.clone();
        tracker.spawn(pump(tokio::io::BufReader::new(out), tx));
        tracker.spawn(pump(tokio::io::BufReader::new(err), tx2));
    }
    Ok(child)
}

/// Makes the directory of `d`'s log file and keeps the previous run's output as `.prev.log`
/// (for `logs --previous`); returns the log file's path. Both drivers call it at each start.
pub(super) async fn prepare_log(opts: &DeployOptions, d: &Desired) -> std::io::Result<PathBuf> {
    let path = log_path(&opts.data_dir, &d.pipeline, &d.key);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        let _ = tokio::fs::rename(&path, path.with_extension("prev.log")).await;
    }
    Ok(path)
}

/// Starts the task (on `tracker`) that appends the lines sent to it to the log file at
/// `path`; it ends when every sender is gone.
pub(super) fn log_writer(
    path: PathBuf,
    tracker: &tokio_util::task::TaskTracker,
) -> tokio::sync::mpsc::Sender<String> {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(1024);
    tracker.spawn(write_log(path, rx));
    tx
}

/// Where a component's `command` is: a path (with a `/`) as given; a bare name on the `PATH`
/// (the instance's own `env.PATH` if it sets one, else the node's), else beside the running
/// `flowctl` binary, where `scripts/install.sh` and `cargo build` put the example components.
/// A name found nowhere is returned as it is, so that the spawn error names it.
fn resolve_program(program: &str, env: &BTreeMap<String, String>) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = env
        .get("PATH")
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    let beside_flowctl = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    std::env::split_paths(&path)
        .chain(beside_flowctl)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| PathBuf::from(program))
}

/// The canonical path of `d`'s program, if `allowed` lets it run; otherwise an error naming
/// the program and the rules.
fn allowed_program(d: &Desired, allowed: &AllowedCommands) -> std::io::Result<PathBuf> {
    let found = resolve_program(&d.program, &d.env);
    let canonical = std::fs::canonicalize(&found).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound && !d.program.contains('/') {
            std::io::Error::new(
                e.kind(),
                "not found on the node's PATH nor beside the flowctl binary",
            )
        } else {
            e
        }
    })?;
    match allowed.allowing(&canonical) {
        Some(_) => Ok(canonical),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is outside this node's --allowed-commands ({})",
                canonical.display(),
                allowed.patterns().join(",")
            ),
        )),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Makes the child receive SIGKILL when this node's process dies, even by SIGKILL, so that
/// a lost node leaves no orphaned instance running next to its replacement.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it allocates nothing and touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn pump<R: tokio::io::AsyncBufRead + Unpin>(r: R, tx: tokio::sync::mpsc::Sender<String>) {
    let mut lines = r.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // A full channel slows the child's output down rather than growing memory.
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

/// Appends lines to the log file, rotating it at [`LOG_CAP_BYTES`].
async fn write_log(path: PathBuf, mut rx: tokio::sync::mpsc::Receiver<String>) {
    let open = |p: PathBuf| async move {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .await
    };
    let Ok(mut f) = open(path.clone()).await else {
        return;
    };
    let mut size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    while let Some(line) = rx.recv().await {
        if size > LOG_CAP_BYTES {
            let _ = f.flush().await;
            let _ = tokio::fs::rename(&path, path.with_extension("log.1")).await;
            let Ok(nf) = open(path.clone()).await else {
                return;
            };
            f = nf;
            size = 0;
        }
        // Every line carries its write time (Unix milliseconds) for `logs --since`.
        let bytes = format!("{} {line}\n", now_ms());
        size += bytes.len() as u64;
        if f.write_all(bytes.as_bytes()).await.is_err() {
            return;
        }
        let _ = f.flush().await;
    }
}

/// Sends `signal` to the process group an instance leads (the instance and every program it
/// started). A group that is gone already is not an error: the instance has exited.
fn signal_group(pgid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// SIGTERM to the instance's process group, then SIGKILL to the group after [`STOP_GRACE`];
/// the group goes too when the instance exits early, so no grandchild outlives it.
async fn stop_instance(child: &mut tokio::process::Child) {
    let Some(pid) = child.id() else {
        let _ = child.kill().await;
        return;
    };
    signal_group(pid, rustix::process::Signal::TERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    signal_group(pid, rustix::process::Signal::KILL);
}

fn exit_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}
