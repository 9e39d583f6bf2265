//! The agent's configuration, read from the environment the deployer sets.
//!
//! Parsing is a pure function of a variable lookup (`AgentConfig::from_vars`), so tests feed it
//! a map; `AgentConfig::from_env` only adapts the process environment to that lookup. Every bad
//! value is reported, each naming its variable, rather than stopping at the first.
//!
//! `FLOWCTL_TOKEN` is a secret: no `Debug` output or error message ever contains it (they
//! show [`REDACTED`] instead).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use crate::Error;

/// `true` (or `1`) to register with the control plane at all.
pub const ENV_ENABLE: &str = "ENABLE_FLOWCTL";
/// Comma list of control-plane `host:port` endpoints.
pub const ENV_ENDPOINT: &str = "FLOWCTL_ENDPOINT";
/// `v1` (package `flowctl.v1`, the default) or `legacy` (package `flowctl`).
pub const ENV_API: &str = "FLOWCTL_API";
/// Heartbeat interval as a Go duration (`10s`, `500ms`, `1m30s`).
pub const ENV_HEARTBEAT_INTERVAL: &str = "FLOWCTL_HEARTBEAT_INTERVAL";
/// Heartbeat interval in milliseconds.
pub const ENV_HEARTBEAT_INTERVAL_MS: &str = "FLOWCTL_HEARTBEAT_INTERVAL_MS";
/// The component's id from the pipeline YAML.
pub const ENV_COMPONENT_ID: &str = "FLOWCTL_COMPONENT_ID";
/// The instance's placement epoch, which the supervisor sets; chunk watches and reports carry
/// it so that a copy left on a node the instance has moved away from is refused.
pub const ENV_EPOCH: &str = "FLOWCTL_EPOCH";
/// Deadline of one control-plane call including its failover retries, as a Go duration.
pub const ENV_REQUEST_TIMEOUT: &str = "FLOWCTL_REQUEST_TIMEOUT";
/// IP address the health server binds (default `127.0.0.1`).
pub const ENV_HEALTH_HOST: &str = "HEALTH_HOST";
/// Port of the health server; `0` or unset picks a free port.
pub const ENV_HEALTH_PORT: &str = "HEALTH_PORT";
/// A bearer token sent on every control-plane call (`authorization: Bearer <token>`). Unset:
/// no credentials, as the original Go components.
pub const ENV_TOKEN: &str = "FLOWCTL_TOKEN";

/// What `Debug` output and error messages show in place of a token.
pub const REDACTED: &str = "<set>";

/// Every variable the agent reads.
pub const ENV_VARS: &[&str] = &[
    ENV_ENABLE,
    ENV_ENDPOINT,
    ENV_API,
    ENV_HEARTBEAT_INTERVAL,
    ENV_HEARTBEAT_INTERVAL_MS,
    ENV_COMPONENT_ID,
    ENV_EPOCH,
    ENV_REQUEST_TIMEOUT,
    ENV_HEALTH_HOST,
    ENV_HEALTH_PORT,
    ENV_TOKEN,
    flowctl_client::ENV_CACERT,
    flowctl_client::ENV_CERT,
    flowctl_client::ENV_KEY,
];

/// The control-plane endpoint when `FLOWCTL_ENDPOINT` is unset, as in the original.
pub const DEFAULT_ENDPOINT: &str = flowctl_client::DEFAULT_ENDPOINT;
/// The heartbeat interval when neither interval variable is set, as in the original.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// The deadline of one control-plane call (with failover) when unset.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The health server's bind address when `HEALTH_HOST` is unset: local only.
pub const DEFAULT_HEALTH_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Which of the two wire-compatible control-plane APIs the agent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// `flowctl.v1.ControlPlaneService`: register, heartbeat with status, unregister.
    #[default]
    V1,
    /// `flowctl.ControlPlane`: register and heartbeat only. It has no unregister call, so the
    /// control plane learns of a shutdown when the heartbeat TTL runs out.
    Legacy,
}

impl Api {
    /// The name used in `FLOWCTL_API`.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::V1 => "v1",
            Api::Legacy => "legacy",
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Api {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" => Ok(Api::V1),
            "legacy" => Ok(Api::Legacy),
            _ => Err("expected `v1` or `legacy`".to_owned()),
        }
    }
}

/// A component's id from the pipeline YAML (`FLOWCTL_COMPONENT_ID`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId(String);

impl ComponentId {
    /// Wraps an id; it must not be empty (an empty id means "no id" on the wire).
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        (!id.trim().is_empty()).then(|| ComponentId(id.trim().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bearer token for the control plane. It is never blank and can always be sent in a
/// header; its `Debug` output is [`REDACTED`].
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Checks and wraps a token (trimmed). The error never repeats the token.
    pub fn new(token: impl Into<String>) -> Result<Self, String> {
        let token = token.into().trim().to_owned();
        if token.is_empty() {
            return Err("the token is empty".to_owned());
        }
        flowctl_proto::auth::Bearer::new(Some(&token))?;
        Ok(BearerToken(token))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// One bad environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvProblem {
    /// The variable's name.
    pub var: &'static str,
    /// Its value as found (lossy for non-UTF-8 values), or [`REDACTED`] for a secret.
    pub value: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

impl fmt::Display for EnvProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.var, self.value, self.reason)
    }
}

/// The agent's typed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Register and heartbeat at all. When false the agent still serves `/health` and
    /// `/metrics`.
    pub enabled: bool,
    /// Control-plane endpoints (`host:port` or `http://host:port`); any node serves any call.
    pub endpoints: Vec<String>,
    pub api: Api,
    /// The mean time between heartbeats; each wait is jittered by ±10%.
    pub heartbeat_interval: Duration,
    /// Deadline of one control-plane call, including failover across `endpoints`.
    pub request_timeout: Duration,
    pub component_id: Option<ComponentId>,
    /// The placement epoch (`FLOWCTL_EPOCH`); `None` outside a flowctl supervisor.
    pub epoch: Option<u64>,
    /// Where the health server binds; port 0 picks a free port.
    pub health_addr: SocketAddr,
    /// Sent on every control-plane call; `None` sends no credentials.
    pub token: Option<BearerToken>,
    /// TLS to the control plane: the CA to trust (`FLOWCTL_CACERT`, which the supervisor
    /// sets when the node's public port has TLS) and a client certificate and key
    /// (`FLOWCTL_CERT`, `FLOWCTL_KEY`). Any of them set makes bare endpoints use TLS.
    pub tls: TlsFiles,
}

/// PEM files for TLS to the control plane; all unset means plaintext (unless an endpoint is
/// written `https://`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl Default for AgentConfig {
    /// What an empty environment gives: disabled, with the original's defaults.
    fn default() -> Self {
        AgentConfig {
            enabled: false,
            endpoints: vec![DEFAULT_ENDPOINT.to_owned()],
            api: Api::V1,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            component_id: None,
            epoch: None,
            health_addr: SocketAddr::new(DEFAULT_HEALTH_HOST, 0),
            token: None,
            tls: TlsFiles::default(),
        }
    }
}

impl AgentConfig {
    /// Reads the process environment (see [`ENV_VARS`]).
    pub fn from_env() -> Result<Self, Error> {
        Self::parse(|var| match std::env::var(var) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(raw)) => Err(raw.to_string_lossy().into_owned()),
        })
    }

    /// Parses from any lookup of variable name to value. An empty value counts as unset, as in
    /// the original Go agent.
    pub fn from_vars<F>(get: F) -> Result<Self, Error>
    where
        F: Fn(&str) -> Option<String>,
    {
        Self::parse(|var| Ok(get(var)))
    }

    /// `lookup` returns `Err(lossy value)` for a value that is not UTF-8.
    fn parse<F>(lookup: F) -> Result<Self, Error>
    where
        F: Fn(&str) -> Result<Option<String>, String>,
    {
        let mut problems = Vec::new();
        let mut get = |var: &'static str| -> Option<String> {
            match lookup(var) {
                Ok(Some(v)) if v.trim().is_empty() => None,
                Ok(v) => v,
                Err(lossy) => {
                    problems.push(EnvProblem {
                        var,
                        value: if var == ENV_TOKEN {
                            REDACTED.to_owned()
                        } else {
                            lossy
                        },
                        reason: "not valid UTF-8".to_owned(),
                    });
                    None
                }
            }
        };
        let enable = get(ENV_ENABLE);
        let endpoint = get(ENV_ENDPOINT);
        let api = get(ENV_API);
        let interval = get(ENV_HEARTBEAT_INTERVAL);
        let interval_ms = get(ENV_HEARTBEAT_INTERVAL_MS);
        let component_id = get(ENV_COMPONENT_ID);
        let epoch = get(ENV_EPOCH);
        let timeout = get(ENV_REQUEST_TIMEOUT);
        let host = get(ENV_HEALTH_HOST);
        let port = get(ENV_HEALTH_PORT);
        let token = get(ENV_TOKEN);
        let tls = TlsFiles {
            ca: get(flowctl_client::ENV_CACERT).map(Into::into),
            cert: get(flowctl_client::ENV_CERT).map(Into::into),
            key: get(flowctl_client::ENV_KEY).map(Into::into),
        };

        let mut config = AgentConfig::default();
        let mut bad = |var: &'static str, value: &str, reason: String| {
            problems.push(EnvProblem {
                var,
                value: value.to_owned(),
                reason,
            })
        };

        if let Some(v) = enable {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => config.enabled = true,
                "false" | "0" => config.enabled = false,
                _ => bad(ENV_ENABLE, &v, "expected `true` or `false`".to_owned()),
            }
        }

        if let Some(v) = endpoint {
            match parse_endpoint_list(&v) {
                Ok(list) => config.endpoints = list,
                Err(reason) => bad(ENV_ENDPOINT, &v, reason),
            }
        }

        if let Some(v) = api {
            match v.parse() {
                Ok(api) => config.api = api,
                Err(reason) => bad(ENV_API, &v, reason),
            }
        }

        let from_go = interval.as_deref().map(|v| {
            parse_go_duration(v)
                .and_then(positive)
                .map_err(|reason| bad(ENV_HEARTBEAT_INTERVAL, v, reason))
        });
        let from_ms = interval_ms.as_deref().map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| "expected a whole number of milliseconds, e.g. `10000`".to_owned())
                .map(Duration::from_millis)
                .and_then(positive)
                .map_err(|reason| bad(ENV_HEARTBEAT_INTERVAL_MS, v, reason))
        });
        match (from_go, from_ms) {
            (Some(Ok(a)), Some(Ok(b))) if a != b => bad(
                ENV_HEARTBEAT_INTERVAL_MS,
                interval_ms.as_deref().unwrap_or_default(),
                format!(
                    "disagrees with {ENV_HEARTBEAT_INTERVAL}={:?}; set only one of them",
                    interval.as_deref().unwrap_or_default()
                ),
            ),
            (Some(Ok(d)), _) | (_, Some(Ok(d))) => config.heartbeat_interval = d,
            _ => {}
        }

        if let Some(v) = component_id {
            config.component_id = ComponentId::new(v);
        }

        if let Some(v) = epoch.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            match v.parse::<u64>() {
                Ok(e) if e > 0 => config.epoch = Some(e),
                _ => bad(
                    ENV_EPOCH,
                    v,
                    "expected a positive whole number (the supervisor sets it)".to_owned(),
                ),
            }
        }

        if let Some(v) = timeout {
            match parse_go_duration(&v).and_then(positive) {
                Ok(d) => config.request_timeout = d,
                Err(reason) => bad(ENV_REQUEST_TIMEOUT, &v, reason),
            }
        }

        if let Some(v) = host {
            match v.trim().parse::<IpAddr>() {
                Ok(ip) => config.health_addr.set_ip(ip),
                Err(_) => bad(
                    ENV_HEALTH_HOST,
                    &v,
                    "expected an IP address such as `127.0.0.1` or `0.0.0.0`".to_owned(),
                ),
            }
        }

        if let Some(v) = port {
            match v.trim().parse::<u16>() {
                Ok(p) => config.health_addr.set_port(p),
                Err(_) => bad(
                    ENV_HEALTH_PORT,
                    &v,
                    "expected a port number from 0 to 65535".to_owned(),
                ),
            }
        }

        if let Some(v) = token {
            match BearerToken::new(v) {
                Ok(t) => config.token = Some(t),
                Err(reason) => bad(ENV_TOKEN, REDACTED, reason),
            }
        }

        config.tls = tls;
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Config { problems })
        }
    }
}

fn positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("must be greater than zero".to_owned())
    } else {
        Ok(d)
    }
}

/// Splits and checks a comma list of endpoints: each is `host:port`, optionally with an
/// `http://` or `https://` scheme.
fn parse_endpoint_list(s: &str) -> Result<Vec<String>, String> {
    let list = flowctl_client::parse_endpoints(s);
    if list.is_empty() {
        return Err("expected a comma list of host:port".to_owned());
    }
    for e in &list {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e);
        let rest = rest.trim_end_matches('/');
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(format!("endpoint {e:?} has no port; expected host:port"));
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("endpoint {e:?} has no host; expected host:port"));
        }
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
            return Err(format!("endpoint {e:?} has a bad port {port:?}"));
        }
    }
    Ok(list)
}

/// Parses a Go `time.Duration` string: an optional sign, then one or more decimal numbers,
/// each with an optional fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g.
/// `10s`, `1.5h`, `1m30s`, `500ms`. A bare `0` is allowed. Negative durations are rejected.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    const HELP: &str = "expected a Go duration such as `10s`, `500ms` or `1m30s`";
    let s = s.trim();
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(HELP.to_owned());
    }
    if negative {
        return Err("must not be negative".to_owned());
    }
    let max = u128::from(u64::MAX);
    let mut total: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(HELP.to_owned());
        }
        let unit_len = after
            .char_indices()
            .find(|&(_, c)| c.is_ascii_digit() || c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit after {int_digits:?}; {HELP}")),
            other => return Err(format!("unknown unit {other:?}; {HELP}")),
        };
        let mut int: u128 = 0;
        for d in int_digits.bytes() {
            int = int * 10 + u128::from(d - b'0');
            if int > max {
                return Err("too large".to_owned());
            }
        }
        // Digits past the 18th cannot change a nanosecond count of an hour-sized unit by more
        // than rounding, and keeping them would overflow the scale.
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        for d in frac_digits.bytes().take(18) {
            frac = frac * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        total += int * unit_ns + frac * unit_ns / scale;
        if total > max {
            return Err("too large".to_owned());
        }
        rest = after;
    }
    let nanos = u64::try_from(total).map_err(|_| "too large".to_owned())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<AgentConfig, Error> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AgentConfig::from_vars(|k| map.get(k).cloned())
    }

    fn problems(vars: &[(&str, &str)]) -> Vec<EnvProblem> {
        match parse(vars) {
            Err(Error::Config { problems }) => problems,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn go_durations_parse_like_go() {
        let ok = [
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("1.5h", Duration::from_secs(5400)),
            ("2h45m", Duration::from_secs(2 * 3600 + 45 * 60)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("+5s", Duration::from_secs(5)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("100μs", Duration::from_micros(100)),
            ("42ns", Duration::from_nanos(42)),
            ("1h1m1s1ms1us1ns", Duration::new(3661, 1_001_001)),
            ("0.000000001s", Duration::from_nanos(1)),
            (" 10s ", Duration::from_secs(10)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_duration(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_go_durations_are_rejected_with_a_reason() {
        for s in [
            "", "10", "s", "10x", "1d", "-5s", "1.2.3s", "ten", "10 s", "1e3s", ".s",
        ] {
            assert!(parse_go_duration(s).is_err(), "{s:?} should be rejected");
        }
        assert!(parse_go_duration("10x").unwrap_err().contains("\"x\""));
        assert!(parse_go_duration("10")
            .unwrap_err()
            .contains("missing unit"));
        assert!(parse_go_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_go_duration("9999999999999999h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn empty_environment_gives_the_original_defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c, AgentConfig::default());
        assert!(!c.enabled);
        assert_eq!(c.endpoints, vec!["localhost:8080"]);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.api, Api::V1);
        assert_eq!(c.health_addr, "127.0.0.1:0".parse().unwrap());
    }

    #[test]
    fn full_environment_is_read() {
        let c = parse(&[
            ("ENABLE_FLOWCTL", "true"),
            ("FLOWCTL_ENDPOINT", "n1:8080, n2:8080,http://n3:9000"),
            ("FLOWCTL_API", "legacy"),
            ("FLOWCTL_HEARTBEAT_INTERVAL", "1m30s"),
            ("FLOWCTL_COMPONENT_ID", "ttp-processor"),
            ("FLOWCTL_REQUEST_TIMEOUT", "750ms"),
            ("HEALTH_HOST", "0.0.0.0"),
            ("HEALTH_PORT", "8088"),
        ])
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.endpoints, vec!["n1:8080", "n2:8080", "http://n3:9000"]);
        assert_eq!(c.api, Api::Legacy);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(90));
        assert_eq!(c.component_id, ComponentId::new("ttp-processor"));
        assert_eq!(c.request_timeout, Duration::from_millis(750));
        assert_eq!(c.health_addr, "0.0.0.0:8088".parse().unwrap());
    }

    #[test]
    fn enable_flowctl_must_be_true_to_enable() {
        assert!(!parse(&[("ENABLE_FLOWCTL", "false")]).unwrap().enabled);
        assert!(!parse(&[("ENABLE_FLOWCTL", "")]).unwrap().enabled);
        assert!(parse(&[("ENABLE_FLOWCTL", "TRUE")]).unwrap().enabled);
        let p = problems(&[("ENABLE_FLOWCTL", "yes")]);
        assert_eq!(p[0].var, "ENABLE_FLOWCTL");
    }

    #[test]
    fn interval_in_milliseconds_is_accepted() {
        let c = parse(&[("FLOWCTL_HEARTBEAT_INTERVAL_MS", "250")]).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        let c = parse(&[
            ("FLOWCTL_HEARTBEAT_INTERVAL", "250ms"),
            ("FLOWCTL_HEARTBEAT_INTERVAL_MS", "250"),
        ])
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
    }

    #[test]
    fn disagreeing_intervals_are_an_error() {
        let p = problems(&[
            ("FLOWCTL_HEARTBEAT_INTERVAL", "10s"),
            ("FLOWCTL_HEARTBEAT_INTERVAL_MS", "500"),
        ]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].var, "FLOWCTL_HEARTBEAT_INTERVAL_MS");
        assert!(p[0].reason.contains("FLOWCTL_HEARTBEAT_INTERVAL="));
    }

    #[test]
    fn every_bad_value_is_reported_naming_its_variable() {
        let p = problems(&[
            ("ENABLE_FLOWCTL", "maybe"),
            ("FLOWCTL_ENDPOINT", "nohost"),
            ("FLOWCTL_API", "v2"),
            ("FLOWCTL_HEARTBEAT_INTERVAL", "10"),
            ("FLOWCTL_HEARTBEAT_INTERVAL_MS", "-3"),
            ("FLOWCTL_REQUEST_TIMEOUT", "0s"),
            ("HEALTH_HOST", "example.com"),
            ("HEALTH_PORT", "70000"),
        ]);
        let vars: Vec<_> = p.iter().map(|p| p.var).collect();
        assert_eq!(
            vars,
            [
                "ENABLE_FLOWCTL",
                "FLOWCTL_ENDPOINT",
                "FLOWCTL_API",
                "FLOWCTL_HEARTBEAT_INTERVAL",
                "FLOWCTL_HEARTBEAT_INTERVAL_MS",
                "FLOWCTL_REQUEST_TIMEOUT",
                "HEALTH_HOST",
                "HEALTH_PORT",
            ]
        );
        let msg = Error::Config { problems: p }.to_string();
        assert!(msg.contains("HEALTH_PORT=\"70000\""), "{msg}");
        assert!(msg.contains("FLOWCTL_API=\"v2\""), "{msg}");
    }

    #[test]
    fn zero_heartbeat_interval_is_rejected() {
        assert_eq!(
            problems(&[("FLOWCTL_HEARTBEAT_INTERVAL", "0s")])[0].reason,
            "must be greater than zero"
        );
        assert_eq!(
            problems(&[("FLOWCTL_HEARTBEAT_INTERVAL_MS", "0")])[0].var,
            "FLOWCTL_HEARTBEAT_INTERVAL_MS"
        );
    }

    #[test]
    fn bad_endpoints_are_named() {
        for bad in [",", "host:", ":80", "host:http", "host:0", "http://"] {
            let p = problems(&[("FLOWCTL_ENDPOINT", bad)]);
            assert_eq!(p[0].var, "FLOWCTL_ENDPOINT", "{bad}");
        }
        let c = parse(&[("FLOWCTL_ENDPOINT", "[::1]:8080")]).unwrap();
        assert_eq!(c.endpoints, vec!["[::1]:8080"]);
    }

    #[test]
    fn flowctl_token_is_read_and_never_printed() {
        let c = parse(&[("FLOWCTL_TOKEN", " s3cret-token\n")]).unwrap();
        assert_eq!(
            c.token.as_ref().map(BearerToken::expose),
            Some("s3cret-token")
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("token: Some(<set>)"), "{debug}");
    }

    #[test]
    fn no_flowctl_token_means_no_credentials() {
        assert_eq!(parse(&[]).unwrap().token, None);
        assert_eq!(parse(&[("FLOWCTL_TOKEN", "  ")]).unwrap().token, None);
    }

    #[test]
    fn a_bad_flowctl_token_is_reported_without_its_value() {
        let p = problems(&[("FLOWCTL_TOKEN", "s3cr\u{1}t")]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].var, "FLOWCTL_TOKEN");
        let msg = Error::Config { problems: p }.to_string();
        assert!(!msg.contains("s3cr"), "{msg}");
        assert!(msg.contains("FLOWCTL_TOKEN=\"<set>\""), "{msg}");
    }

    #[test]
    fn a_non_utf8_flowctl_token_is_reported_without_its_value() {
        let e = AgentConfig::parse(|var| {
            if var == ENV_TOKEN {
                Err("s3cr\u{fffd}t".to_owned())
            } else {
                Ok(None)
            }
        })
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("FLOWCTL_TOKEN=\"<set>\": not valid UTF-8"),
            "{msg}"
        );
        assert!(!msg.contains("s3cr"), "{msg}");
    }

    #[test]
    fn the_epoch_is_a_positive_number_or_unset() {
        assert_eq!(parse(&[("FLOWCTL_EPOCH", "42")]).unwrap().epoch, Some(42));
        assert_eq!(parse(&[("FLOWCTL_EPOCH", " ")]).unwrap().epoch, None);
        assert_eq!(parse(&[]).unwrap().epoch, None);
        for bad in ["0", "-1", "x", "1.5"] {
            let p = problems(&[("FLOWCTL_EPOCH", bad)]);
            assert_eq!(p.len(), 1, "{bad}");
            assert_eq!(p[0].var, "FLOWCTL_EPOCH", "{bad}");
        }
    }

    #[test]
    fn blank_component_id_means_none() {
        assert_eq!(
            parse(&[("FLOWCTL_COMPONENT_ID", "  ")])
                .unwrap()
                .component_id,
            None
        );
    }
}
