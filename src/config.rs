//! Typed, validated configuration.
//!
//! Loaded from TOML (`wsplice --config FILE`) or built from command-line flags. Every error names the
//! file, the line and the key, so the operator knows which line to fix.
//!
//! The public types are the contract the driver relies on; loading and validation live below them.
//!
//! ```
//! use wsplice::config::Config;
//!
//! let cfg = Config::from_toml_str(
//!     r#"
//! listen = ["127.0.0.1:8000"]
//! [[route]]
//! prefix = "/notice/"
//! backends = ["127.0.0.1:50001"]
//! "#,
//!     "wsplice.toml",
//! )?;
//! assert_eq!(cfg.routes[0].prefix, "/notice");
//!
//! let err = Config::from_toml_str("listn = []\n", "wsplice.toml").unwrap_err();
//! assert_eq!((err.line(), err.key()), (Some(1), Some("listn")));
//! assert!(err.to_string().starts_with("wsplice.toml:1: unknown key `listn` (expected one of: listen,"));
//! # Ok::<(), wsplice::config::ConfigError>(())
//! ```
//!
//! Loading is two passes: `toml` parses the document into a span-carrying tree (`DeTable`), then
//! this module walks that tree key by key. Walking by hand rather than through `serde` derives is
//! deliberate: serde's errors carry a span but not the key path (`timeouts.idle`), and the key is
//! what the operator searches the file for.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// How X-Forwarded-For is written toward the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedFor {
    /// Append the client address to the client's own X-Forwarded-For (nginx's
    /// `$proxy_add_x_forwarded_for`).
    #[default]
    Append,
    /// Replace whatever the client sent with the client address.
    Replace,
}

/// How tunnel bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayMode {
    /// Choose per read: small reads copy through a per-worker scratch buffer, bulk reads splice.
    #[default]
    Auto,
    /// Always splice(2) through a pooled pipe (copy only when no pipe can be had).
    Splice,
    /// Always copy through the per-worker scratch buffer.
    Copy,
}

/// How workers run: `worker_model` (or `--worker-model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerModel {
    /// Processes when they hold more tunnels than threads would (each process has its own
    /// open-file limit), threads otherwise; start-up says which and why.
    #[default]
    Auto,
    /// Worker threads in one process: one descriptor table for all of them.
    Threads,
    /// One process per worker under a supervisor: a descriptor table each, a crash is local.
    Processes,
}

impl WorkerModel {
    /// The config spelling: `auto`, `threads` or `processes`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerModel::Auto => "auto",
            WorkerModel::Threads => "threads",
            WorkerModel::Processes => "processes",
        }
    }
}

fn parse_worker_model(s: &str) -> Result<WorkerModel, String> {
    match s {
        "auto" => Ok(WorkerModel::Auto),
        "threads" => Ok(WorkerModel::Threads),
        "processes" => Ok(WorkerModel::Processes),
        _ => Err(format!(
            "invalid value {s:?}: expected \"auto\", \"threads\" or \"processes\""
        )),
    }
}

/// Timeouts. `Duration::ZERO` for `idle` or `half_close` means "never".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request head must arrive within this (default 10 s).
    pub handshake: Duration,
    /// One backend connect attempt (default 5 s).
    pub connect: Duration,
    /// A tunnel with no bytes either way is closed after this (default 1 h; 0 = never).
    pub idle: Duration,
    /// After one side sent FIN, the other direction may run this long (default 30 s; 0 = never).
    pub half_close: Duration,
    /// On SIGTERM/SIGINT, tunnels may run this long before they are closed (default 30 s).
    pub drain: Duration,
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent client connections for the whole process (split evenly across workers).
    /// `None`: derived from the open-file limit.
    pub max_connections: Option<usize>,
    /// Largest request head (default 16 KiB). Also bounds the backend's response head.
    pub max_head_bytes: usize,
    /// Most request headers (default 100).
    pub max_headers: usize,
    /// Concurrent connections from one client IP (whole process); `None`: unlimited. Beyond it
    /// new connections get 429.
    pub max_connections_per_ip: Option<usize>,
}

/// TCP keepalive applied to both the client and the backend socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (default 60 s). `Duration::ZERO` disables keepalive.
    pub idle: Duration,
    /// Between probes (default 10 s).
    pub interval: Duration,
    /// Unanswered probes before the kernel drops the connection (default 6).
    pub count: u32,
}

/// Relay tuning (zero-copy path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub mode: RelayMode,
    /// Pipes pooled per process (split across workers). `None`: a quarter of max connections.
    pub max_pipes: Option<usize>,
    /// F_SETPIPE_SZ for pooled pipes, bytes (default 64 KiB).
    pub pipe_size: usize,
    /// In `auto`, a burst (bytes waiting at one readiness) at least this large switches a
    /// direction to splice (default 64 KiB: measured, see bench-results/README.md).
    pub splice_threshold: usize,
}

/// One route: requests whose path starts with `prefix` (and whose Host matches `host`, if set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path prefix, starts with `/`, no trailing slash unless it is `/` itself.
    pub prefix: String,
    /// Lower-cased host name without port; `None` matches any Host.
    pub host: Option<String>,
    /// At least one.
    pub backends: Vec<SocketAddr>,
    /// Default true: `/notice/a?x=1` reaches the backend as `/a?x=1`.
    pub strip_prefix: bool,
    /// Default Append.
    pub forwarded_for: ForwardedFor,
    /// Send a PROXY protocol header of this version to the backend first (default: none).
    pub send_proxy: Option<ProxyVersion>,
}

/// PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// Listeners that expect a PROXY protocol header from a load balancer in front.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyIn {
    /// These `listen` addresses require a PROXY v1 or v2 header before the HTTP head.
    pub listen: Vec<SocketAddr>,
    /// Peers allowed to send it; a connection from anyone else is answered 400.
    pub trusted: Vec<ipnet::IpNet>,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Workers; `None` = one per CPU core.
    pub workers: Option<usize>,
    /// Threads in one process or a process each.
    pub worker_model: WorkerModel,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub keepalive: Keepalive,
    pub relay: Relay,
    pub routes: Vec<Route>,
    /// The admin listener (`/metrics`, `/healthz`, `/status`); off when `None`.
    pub admin: Option<SocketAddr>,
    /// One line per connection when it ends; off when `None`.
    pub access_log: Option<AccessLog>,
    /// Clients in these networks may pass X-Forwarded-For on (appended to); from anyone else it is
    /// replaced. Empty: each route's `forwarded_for` decides for everyone.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// PROXY protocol on the way in.
    pub proxy_protocol: ProxyIn,
    /// Forward client headers whose names contain `_` (default true). Lookalikes of headers the
    /// proxy strips or writes (`X_Real_IP`, `Transfer_Encoding`, ...) are dropped either way:
    /// CGI/WSGI-style backends read them as the `-` spelling. `false` drops every such name, as
    /// nginx does by default.
    pub underscores_in_headers: bool,
}

/// Where and how connection lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// A file path, or `-` for stdout.
    pub path: String,
    pub format: LogFormat,
}

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `key=value` pairs after the time and client address.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(3600),
            half_close: Duration::from_secs(30),
            drain: Duration::from_secs(30),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            max_connections_per_ip: None,
        }
    }
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 6,
        }
    }
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            mode: RelayMode::Auto,
            max_pipes: None,
            pipe_size: 64 * 1024,
            splice_threshold: 64 * 1024,
        }
    }
}

impl RelayMode {
    /// The config spelling: `auto`, `splice` or `copy`.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayMode::Auto => "auto",
            RelayMode::Splice => "splice",
            RelayMode::Copy => "copy",
        }
    }
}

impl std::fmt::Display for RelayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ForwardedFor {
    /// The config spelling: `append` or `replace`.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardedFor::Append => "append",
            ForwardedFor::Replace => "replace",
        }
    }
}

impl std::fmt::Display for ForwardedFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configuration error, formatted like `nginx -t`: `FILE:LINE: KEY: what is wrong`.
///
/// Parts that do not apply are left out: a missing required key has no line
/// (`wsplice.toml: listen: missing required key`), a TOML syntax error has no key, and errors in
/// command-line flags name the flag instead of a file (`--route: invalid value "/x": ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    file: Option<String>,
    line: Option<usize>,
    key: Option<String>,
    message: String,
    /// The message already quotes the key (`unknown key `x``), so Display does not repeat it.
    key_in_message: bool,
}

impl ConfigError {
    fn new(
        file: Option<&str>,
        line: Option<usize>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.map(str::to_owned),
            line,
            key: key.map(str::to_owned),
            message: message.into(),
            key_in_message: false,
        }
    }

    fn flag(flag: &str, message: impl Into<String>) -> Self {
        ConfigError::new(None, None, Some(flag), message)
    }

    /// The file the error is in; `None` for command-line flags.
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// 1-based line of the offending key or value; `None` when there is no such line (a missing
    /// top-level key, an unreadable file, a command-line flag).
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// Dotted key path (`timeouts.idle`, `route.backends`) or flag (`--route`).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, _) => {}
        }
        match &self.key {
            Some(key) if !self.key_in_message => write!(f, "{key}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a TOML file. Errors name `path` as given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_text(path).map(|(cfg, _)| cfg)
    }

    /// Like [`Config::load`], and also the text it parsed (worker processes parse exactly
    /// the bytes the supervisor validated).
    pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(Some(&file), None, None, format!("cannot read: {e}")))?;
        let cfg = Config::from_toml_str(&text, &file)?;
        Ok((cfg, text))
    }

    /// Parses and validates TOML text; `file` is only used in error messages.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        let src = Source { file, text };
        let doc = DeTable::parse(text).map_err(|e| src.syntax_error(&e))?;
        let root = Table::new(&src, "", None, doc.get_ref(), ROOT_KEYS)?;

        let listen_field = root.require("listen")?;
        let mut listen: Vec<SocketAddr> = Vec::new();
        let addrs = listen_field.array("an array of addresses, such as [\"127.0.0.1:8080\"]")?;
        if addrs.is_empty() {
            return Err(listen_field.error("must list at least one address"));
        }
        for item in addrs {
            let item = listen_field.item(item);
            let addr = parse_addr(item.str()?).map_err(|m| item.error(m))?;
            if listen.contains(&addr) {
                return Err(item.error(format!("{addr} is listed twice")));
            }
            listen.push(addr);
        }

        let workers = match root.get("workers") {
            Some(f) => Some(f.uint_in(1, MAX_WORKERS)?),
            None => None,
        };

        let worker_model = match root.get("worker_model") {
            Some(f) => parse_worker_model(f.str()?).map_err(|m| f.error(m))?,
            None => WorkerModel::Auto,
        };

        let access_log = match root.table("access_log", ACCESS_LOG_KEYS)? {
            None => None,
            Some(t) => {
                let path = match t.get("path") {
                    Some(f) => {
                        let p = f.str()?;
                        if p.is_empty() {
                            return Err(f.error("must be a file path, or \"-\" for stdout"));
                        }
                        p.to_string()
                    }
                    None => "-".to_string(),
                };
                let format = match t.get("format") {
                    None => LogFormat::Text,
                    Some(f) => match f.str()? {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        other => {
                            return Err(f.error(format!(
                                "unknown format \"{other}\" (expected \"text\" or \"json\")"
                            )))
                        }
                    },
                };
                Some(AccessLog { path, format })
            }
        };

        let trusted_proxies = match root.get("trusted_proxies") {
            Some(f) => parse_nets(&f)?,
            None => Vec::new(),
        };
        let underscores_in_headers = match root.get("underscores_in_headers") {
            Some(f) => f.bool()?,
            None => true,
        };
        let mut proxy_protocol = ProxyIn::default();
        if let Some(t) = root.table("proxy_protocol", PROXY_KEYS)? {
            if let Some(f) = t.get("listen") {
                for item in f.array("an array of listen addresses")? {
                    let item = f.item(item);
                    let addr = parse_addr(item.str()?).map_err(|m| item.error(m))?;
                    if !listen.contains(&addr) {
                        return Err(item.error(format!(
                            "{addr} is not one of the `listen` addresses; add it there too"
                        )));
                    }
                    proxy_protocol.listen.push(addr);
                }
            }
            if let Some(f) = t.get("trusted") {
                proxy_protocol.trusted = parse_nets(&f)?;
            }
            if !proxy_protocol.listen.is_empty() && proxy_protocol.trusted.is_empty() {
                let line = t.span.as_ref().map(|s| src.line_of(s.start));
                return Err(ConfigError::new(
                    Some(file),
                    line,
                    Some("proxy_protocol.trusted"),
                    "list the load balancers allowed to send PROXY headers, such as [\"10.0.0.0/8\"]",
                ));
            }
        }

        let admin = match root.get("admin") {
            Some(f) => Some(parse_addr(f.str()?).map_err(|m| f.error(m))?),
            None => None,
        };

        let mut relay = Relay::default();
        if let Some(f) = root.get("relay") {
            relay.mode = parse_relay_mode(f.str()?).map_err(|m| f.error(m))?;
        }

        let mut timeouts = Timeouts::default();
        if let Some(t) = root.table("timeouts", TIMEOUT_KEYS)? {
            if let Some(f) = t.get("handshake") {
                timeouts.handshake = f.positive_duration()?;
            }
            if let Some(f) = t.get("connect") {
                timeouts.connect = f.positive_duration()?;
            }
            if let Some(f) = t.get("idle") {
                timeouts.idle = f.duration()?;
            }
            if let Some(f) = t.get("half_close") {
                timeouts.half_close = f.duration()?;
            }
            if let Some(f) = t.get("drain") {
                timeouts.drain = f.duration()?;
            }
        }

        let mut limits = Limits::default();
        if let Some(t) = root.table("limits", LIMIT_KEYS)? {
            if let Some(f) = t.get("max_connections") {
                limits.max_connections = Some(f.uint_in(1, usize::MAX as u64)?);
            }
            if let Some(f) = t.get("max_head_bytes") {
                limits.max_head_bytes = f.size_in(MIN_HEAD_BYTES, MAX_HEAD_BYTES)?;
            }
            if let Some(f) = t.get("max_headers") {
                limits.max_headers = f.uint_in(1, MAX_HEADERS)?;
            }
            if let Some(f) = t.get("max_connections_per_ip") {
                limits.max_connections_per_ip = Some(f.uint_in(1, usize::MAX as u64)?);
            }
        }

        let mut keepalive = Keepalive::default();
        if let Some(t) = root.table("keepalive", KEEPALIVE_KEYS)? {
            if let Some(f) = t.get("idle") {
                keepalive.idle = f.keepalive_secs(true)?;
            }
            if let Some(f) = t.get("interval") {
                keepalive.interval = f.keepalive_secs(false)?;
            }
            if let Some(f) = t.get("count") {
                keepalive.count = f.uint_in(1, MAX_KEEPALIVE_COUNT)?;
            }
        }

        if let Some(t) = root.table("splice", SPLICE_KEYS)? {
            if let Some(f) = t.get("max_pipes") {
                relay.max_pipes = Some(f.uint_in(0, usize::MAX as u64)?);
            }
            if let Some(f) = t.get("pipe_size") {
                relay.pipe_size = f.size_in(MIN_PIPE_SIZE, MAX_PIPE_SIZE)?;
            }
            if let Some(f) = t.get("threshold") {
                relay.splice_threshold = f.size_in(1, usize::MAX as u64)?;
            }
        }

        let routes = match root.get("route") {
            Some(f) => parse_routes(&f)?,
            None => Vec::new(),
        };
        if routes.is_empty() {
            return Err(ConfigError::new(
                Some(file),
                None,
                Some("route"),
                "at least one [[route]] with a prefix and backends is required",
            ));
        }

        Ok(Config {
            listen,
            workers,
            worker_model,
            timeouts,
            limits,
            keepalive,
            relay,
            routes,
            admin,
            access_log,
            trusted_proxies,
            proxy_protocol,
            underscores_in_headers,
        })
    }

    /// Builds a configuration from command-line flags; everything not given takes its default.
    ///
    /// Each route is `PREFIX=HOST:PORT[,HOST:PORT...]`, e.g. `/notice=127.0.0.1:50001`. Routes built
    /// this way match any Host, strip their prefix and append to X-Forwarded-For. Errors name the
    /// flag and the bad value.
    pub fn from_cli(
        listen: Vec<SocketAddr>,
        routes: &[String],
        workers: Option<usize>,
        relay: Option<RelayMode>,
    ) -> Result<Config, ConfigError> {
        if listen.is_empty() {
            return Err(ConfigError::flag(
                "--listen",
                "at least one --listen ADDR is required",
            ));
        }
        for (i, addr) in listen.iter().enumerate() {
            if listen[..i].contains(addr) {
                return Err(ConfigError::flag(
                    "--listen",
                    format!("{addr} is given twice"),
                ));
            }
        }
        if let Some(n) = workers {
            if n == 0 || n as u64 > MAX_WORKERS {
                return Err(ConfigError::flag(
                    "--workers",
                    format!("invalid value {n}: must be between 1 and {MAX_WORKERS}"),
                ));
            }
        }
        if routes.is_empty() {
            return Err(ConfigError::flag(
                "--route",
                "at least one --route PREFIX=HOST:PORT is required",
            ));
        }
        let mut parsed: Vec<Route> = Vec::with_capacity(routes.len());
        for raw in routes {
            let bad =
                |why: String| ConfigError::flag("--route", format!("invalid value {raw:?}: {why}"));
            let Some((prefix, backends)) = raw.split_once('=') else {
                return Err(bad(
                    "expected PREFIX=HOST:PORT[,HOST:PORT...], such as /notice=127.0.0.1:50001"
                        .into(),
                ));
            };
            let prefix = normalize_prefix(prefix).map_err(|m| bad(format!("prefix: {m}")))?;
            let mut addrs = Vec::new();
            for backend in backends.split(',') {
                addrs
                    .push(parse_backend(backend.trim()).map_err(|m| bad(format!("backend: {m}")))?);
            }
            if parsed.iter().any(|r| r.prefix == prefix) {
                return Err(bad(format!("prefix {prefix:?} is routed twice")));
            }
            parsed.push(Route {
                prefix,
                host: None,
                backends: addrs,
                strip_prefix: true,
                forwarded_for: ForwardedFor::Append,
                send_proxy: None,
            });
        }
        Ok(Config {
            listen,
            workers,
            worker_model: WorkerModel::Auto,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            keepalive: Keepalive::default(),
            relay: Relay {
                mode: relay.unwrap_or_default(),
                ..Relay::default()
            },
            routes: parsed,
            admin: None,
            access_log: None,
            trusted_proxies: Vec::new(),
            proxy_protocol: ProxyIn::default(),
            underscores_in_headers: true,
        })
    }
}

const ROOT_KEYS: &[&str] = &[
    "listen",
    "workers",
    "worker_model",
    "relay",
    "timeouts",
    "limits",
    "keepalive",
    "splice",
    "route",
    "admin",
    "access_log",
    "trusted_proxies",
    "proxy_protocol",
    "underscores_in_headers",
];
const PROXY_KEYS: &[&str] = &["listen", "trusted"];
const ACCESS_LOG_KEYS: &[&str] = &["path", "format"];
const TIMEOUT_KEYS: &[&str] = &["handshake", "connect", "idle", "half_close", "drain"];
const LIMIT_KEYS: &[&str] = &[
    "max_connections",
    "max_head_bytes",
    "max_headers",
    "max_connections_per_ip",
];
const KEEPALIVE_KEYS: &[&str] = &["idle", "interval", "count"];
const SPLICE_KEYS: &[&str] = &["max_pipes", "pipe_size", "threshold"];
const ROUTE_KEYS: &[&str] = &[
    "prefix",
    "host",
    "backends",
    "strip_prefix",
    "forwarded_for",
    "send_proxy",
];

const MAX_WORKERS: u64 = 1024;
const MIN_HEAD_BYTES: u64 = 1024;
const MAX_HEAD_BYTES: u64 = 1 << 20;
const MAX_HEADERS: u64 = 1000;
/// Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32767 s (MAX_TCP_KEEPIDLE) and TCP_KEEPCNT at 127.
const MAX_KEEPALIVE_SECS: u64 = 32767;
const MAX_KEEPALIVE_COUNT: u64 = 127;
const MIN_PIPE_SIZE: u64 = 4 << 10;
/// The default fs.pipe-max-size; larger F_SETPIPE_SZ fails for unprivileged processes.
const MAX_PIPE_SIZE: u64 = 1 << 20;
/// Deadlines are `Instant + Duration`, which panics on overflow; a year is far beyond any real timeout.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const DURATION_HINT: &str = "expected a number followed by a unit such as 30s, 5m, 1h";
const SIZE_HINT: &str =
    "expected a number of bytes with an optional unit such as 16384, \"16KiB\", \"1MiB\"";

/// The text being parsed and the name to report it under.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn error(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(
            Some(self.file),
            Some(self.line_of(span.start)),
            Some(key),
            message,
        )
    }

    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| self.line_of(s.start));
        let mut message = format!("invalid TOML: {}", e.message());
        // For "duplicate key" the span is the key itself; quote it so the line is easy to read.
        if let Some(quoted) = e
            .span()
            .and_then(|s| self.text.get(s))
            .filter(|s| !s.trim().is_empty() && s.len() <= 64)
        {
            if e.message().contains("duplicate") {
                message.push_str(&format!(" `{}`", quoted.trim()));
            }
        }
        ConfigError::new(Some(self.file), line, None, message)
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A TOML table whose keys have been checked against the allowed set.
struct Table<'a> {
    src: &'a Source<'a>,
    path: &'a str,
    /// `None` for the document root, which has no header line.
    span: Option<Range<usize>>,
    entries: &'a DeTable<'a>,
}

impl<'a> Table<'a> {
    fn new(
        src: &'a Source<'a>,
        path: &'a str,
        span: Option<Range<usize>>,
        entries: &'a DeTable<'a>,
        allowed: &[&str],
    ) -> Result<Table<'a>, ConfigError> {
        // The map is sorted by key, not by position: report the first unknown key in file order.
        let unknown = entries
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !allowed.contains(&k.get_ref().as_ref()))
            .min_by_key(|k| k.span().start);
        if let Some(k) = unknown {
            let key = join_key(path, k.get_ref());
            let mut e = src.error(
                &k.span(),
                &key,
                format!(
                    "unknown key `{key}` (expected one of: {})",
                    allowed.join(", ")
                ),
            );
            e.key_in_message = true;
            return Err(e);
        }
        Ok(Table {
            src,
            path,
            span,
            entries,
        })
    }

    fn get(&self, key: &str) -> Option<Field<'a>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, value)| Field {
                src: self.src,
                key: join_key(self.path, key),
                value,
            })
    }

    fn require(&self, key: &str) -> Result<Field<'a>, ConfigError> {
        self.get(key).ok_or_else(|| {
            let line = self.span.as_ref().map(|s| self.src.line_of(s.start));
            ConfigError::new(
                Some(self.src.file),
                line,
                Some(&join_key(self.path, key)),
                "missing required key",
            )
        })
    }

    /// A nested table such as `[timeouts]` (tables nest one level, so the key is also the path).
    fn table(&self, key: &'a str, allowed: &[&str]) -> Result<Option<Table<'a>>, ConfigError> {
        match self.get(key) {
            Some(f) => f.table(key, allowed).map(Some),
            None => Ok(None),
        }
    }
}

/// One value and the dotted key it was found under.
struct Field<'a> {
    src: &'a Source<'a>,
    key: String,
    value: &'a Spanned<DeValue<'a>>,
}

impl<'a> Field<'a> {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        self.src.error(&self.value.span(), &self.key, message)
    }

    fn type_error(&self, expected: &str) -> ConfigError {
        let found = match self.value.get_ref() {
            DeValue::String(s) => format!("string {s:?}"),
            DeValue::Integer(i) => format!("integer {i}"),
            DeValue::Boolean(b) => format!("boolean {b}"),
            other => other.type_str().to_owned(),
        };
        self.error(format!("expected {expected}, found {found}"))
    }

    /// An element of this array, reported under the array's key.
    fn item(&self, value: &'a Spanned<DeValue<'a>>) -> Field<'a> {
        Field {
            src: self.src,
            key: self.key.clone(),
            value,
        }
    }

    fn str(&self) -> Result<&'a str, ConfigError> {
        match self.value.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(self.type_error("a string")),
        }
    }

    fn bool(&self) -> Result<bool, ConfigError> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.type_error("true or false")),
        }
    }

    fn array(&self, expected: &str) -> Result<&'a [Spanned<DeValue<'a>>], ConfigError> {
        match self.value.get_ref() {
            DeValue::Array(a) => Ok(a),
            _ => Err(self.type_error(expected)),
        }
    }

    fn table(&self, path: &'a str, allowed: &[&str]) -> Result<Table<'a>, ConfigError> {
        match self.value.get_ref() {
            DeValue::Table(t) => Table::new(self.src, path, Some(self.value.span()), t, allowed),
            _ => Err(self.type_error("a table")),
        }
    }

    fn int(&self) -> Result<i128, ConfigError> {
        match self.value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| self.error(format!("integer {i} is out of range"))),
            _ => Err(self.type_error("an integer")),
        }
    }

    fn uint_in<T: TryFrom<u64>>(&self, min: u64, max: u64) -> Result<T, ConfigError> {
        let n = self.int()?;
        check_range(n, min, max).map_err(|m| self.error(m))?;
        // In range, so it fits u64; the target type may still be narrower (usize on 32-bit).
        u64::try_from(n)
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| self.error(format!("{n} is too large")))
    }

    /// An integer number of bytes, or a string such as "16KiB".
    fn size_in(&self, min: u64, max: u64) -> Result<usize, ConfigError> {
        let n: i128 = match self.value.get_ref() {
            DeValue::Integer(_) => self.int()?,
            DeValue::String(s) => parse_size(s).map_err(|m| self.error(m))?.into(),
            _ => return Err(self.type_error("a size such as 16384 or \"16KiB\"")),
        };
        check_range(n, min, max).map_err(|m| self.error(m))?;
        usize::try_from(n).map_err(|_| self.error(format!("{n} is too large")))
    }

    /// A string such as "10s" or "1h 30m"; "0" or the integer 0 mean zero.
    fn duration(&self) -> Result<Duration, ConfigError> {
        let d = match self.value.get_ref() {
            DeValue::String(s) => parse_duration(s).map_err(|m| self.error(m))?,
            DeValue::Integer(_) => match self.int()? {
                0 => Duration::ZERO,
                n => {
                    return Err(self.error(format!(
                        "invalid duration {n}: a number needs a unit, such as \"{n}s\""
                    )))
                }
            },
            _ => return Err(self.type_error("a duration such as \"30s\"")),
        };
        if d > MAX_DURATION {
            return Err(self.error("must be at most 365 days (use 0 for \"never\")"));
        }
        Ok(d)
    }

    fn positive_duration(&self) -> Result<Duration, ConfigError> {
        let d = self.duration()?;
        if d.is_zero() {
            return Err(self.error("must be greater than 0"));
        }
        Ok(d)
    }

    /// Keepalive socket options take whole seconds, 1..=32767; `zero_ok` allows 0 (disabled).
    fn keepalive_secs(&self, zero_ok: bool) -> Result<Duration, ConfigError> {
        let d = self.duration()?;
        if d.is_zero() && zero_ok {
            return Ok(d);
        }
        if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > MAX_KEEPALIVE_SECS {
            return Err(self.error(format!(
                "must be a whole number of seconds from 1s to {MAX_KEEPALIVE_SECS}s{}",
                if zero_ok {
                    " (or 0 to disable keepalive)"
                } else {
                    ""
                }
            )));
        }
        Ok(d)
    }
}

fn check_range(n: i128, min: u64, max: u64) -> Result<(), String> {
    if n >= i128::from(min) && n <= i128::from(max) {
        Ok(())
    } else if max == usize::MAX as u64 || max == u64::MAX {
        Err(format!("must be at least {min}, got {n}"))
    } else {
        Err(format!("must be between {min} and {max}, got {n}"))
    }
}

fn parse_routes(field: &Field<'_>) -> Result<Vec<Route>, ConfigError> {
    let tables = field.array("[[route]] tables")?;
    let mut routes: Vec<Route> = Vec::with_capacity(tables.len());
    let mut lines: Vec<usize> = Vec::with_capacity(tables.len());
    for value in tables {
        let t = field.item(value).table("route", ROUTE_KEYS)?;
        let prefix_field = t.require("prefix")?;
        let prefix = normalize_prefix(prefix_field.str()?).map_err(|m| prefix_field.error(m))?;
        let host = match t.get("host") {
            Some(f) => Some(normalize_host(f.str()?).map_err(|m| f.error(m))?),
            None => None,
        };
        let backends_field = t.require("backends")?;
        let items =
            backends_field.array("an array of backend addresses, such as [\"127.0.0.1:50001\"]")?;
        if items.is_empty() {
            return Err(backends_field.error("must list at least one backend"));
        }
        let mut backends = Vec::with_capacity(items.len());
        for item in items {
            let item = backends_field.item(item);
            backends.push(parse_backend(item.str()?).map_err(|m| item.error(m))?);
        }
        let strip_prefix = match t.get("strip_prefix") {
            Some(f) => f.bool()?,
            None => true,
        };
        let forwarded_for = match t.get("forwarded_for") {
            Some(f) => match f.str()? {
                "append" => ForwardedFor::Append,
                "replace" => ForwardedFor::Replace,
                other => {
                    return Err(f.error(format!(
                        "invalid value {other:?}: expected \"append\" or \"replace\""
                    )));
                }
            },
            None => ForwardedFor::Append,
        };
        let send_proxy = match t.get("send_proxy") {
            None => None,
            Some(f) => match f.str()? {
                "v1" => Some(ProxyVersion::V1),
                "v2" => Some(ProxyVersion::V2),
                "none" => None,
                other => {
                    return Err(f.error(format!(
                        "invalid value {other:?}: expected \"v1\", \"v2\" or \"none\""
                    )));
                }
            },
        };
        let line = field.src.line_of(prefix_field.value.span().start);
        if let Some(i) = routes
            .iter()
            .position(|r| r.prefix == prefix && r.host == host)
        {
            let host = host
                .as_deref()
                .map_or("any host".to_owned(), |h| format!("host {h}"));
            return Err(prefix_field.error(format!(
                "duplicate route: prefix {prefix:?} for {host} is already defined on line {}",
                lines[i]
            )));
        }
        lines.push(line);
        routes.push(Route {
            prefix,
            host,
            backends,
            strip_prefix,
            forwarded_for,
            send_proxy,
        });
    }
    Ok(routes)
}

fn parse_nets(field: &Field<'_>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let mut nets = Vec::new();
    for item in field.array("an array of networks, such as [\"10.0.0.0/8\", \"127.0.0.1\"]")? {
        let item = field.item(item);
        let text = item.str()?;
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                item.error(format!(
                    "invalid network {text:?}: expected an address or CIDR such as 10.0.0.0/8"
                ))
            })?;
        nets.push(net);
    }
    Ok(nets)
}

fn parse_relay_mode(s: &str) -> Result<RelayMode, String> {
    match s {
        "auto" => Ok(RelayMode::Auto),
        "splice" => Ok(RelayMode::Splice),
        "copy" => Ok(RelayMode::Copy),
        _ => Err(format!(
            "invalid value {s:?}: expected \"auto\", \"splice\" or \"copy\""
        )),
    }
}

/// `"10s"`, `"500ms"`, `"1h 30m"` (humantime), or `"0"`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|_| format!("invalid duration {s:?}: {DURATION_HINT}"))
}

/// `16384`, `"16KiB"`, `"64 KiB"`, `"1MiB"`. `k`/`kb`/`kib` all mean 1024, as in nginx.
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: {SIZE_HINT}");
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match t[digits..].trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// A listen address: `IP:PORT`; port 0 asks the kernel for a free port.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let t = s.trim();
    let why = if t.contains("://") || t.contains('/') {
        "expected IP:PORT without a scheme or path".to_owned()
    } else if t.parse::<IpAddr>().is_ok() || t.trim_matches(['[', ']']).parse::<Ipv6Addr>().is_ok()
    {
        "missing port".to_owned()
    } else if t.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    }) {
        "use an IP address: name resolution is not supported yet".to_owned()
    } else {
        "expected IP:PORT, such as 127.0.0.1:8080 or [::1]:8080".to_owned()
    };
    Err(format!("invalid address {s:?}: {why}"))
}

fn parse_backend(s: &str) -> Result<SocketAddr, String> {
    let addr = parse_addr(s)?;
    if addr.port() == 0 {
        return Err(format!(
            "invalid address {s:?}: a backend needs a non-zero port"
        ));
    }
    Ok(addr)
}

/// Starts with `/`; no query, fragment, whitespace, control or non-ASCII bytes; trailing `/`
/// removed unless the prefix is `/` itself.
fn normalize_prefix(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("invalid prefix {s:?}: must start with '/'"));
    }
    if let Some(c) = s.chars().find(|&c| c == '?' || c == '#') {
        return Err(format!(
            "invalid prefix {s:?}: must not contain '{c}' (routes match the path only)"
        ));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid prefix {s:?}: must not contain whitespace or control characters"
        ));
    }
    if !s.is_ascii() {
        return Err(format!(
            "invalid prefix {s:?}: must be ASCII (percent-encode other characters)"
        ));
    }
    let trimmed = s.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// Lower-cased host name or IP literal (`[::1]` for IPv6), without a port.
fn normalize_host(s: &str) -> Result<String, String> {
    let host = s.to_ascii_lowercase();
    let bad = |why: &str| Err(format!("invalid host {s:?}: {why}"));
    if host.is_empty() {
        return bad("must not be empty (leave `host` out to match any Host)");
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(ip) if ip.parse::<Ipv6Addr>().is_ok() => Ok(host),
            _ if inner.contains("]:") => bad("must not include a port"),
            _ => bad("expected an IPv6 address in brackets, such as [::1]"),
        };
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return bad("write an IPv6 address in brackets, such as [::1]");
    }
    if host.contains(':') {
        return bad("must not include a port");
    }
    if host.len() > 253 {
        return bad("longer than 253 characters");
    }
    if let Some(c) = host
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
    {
        return bad(&format!("invalid character {c:?}"));
    }
    if host.split('.').any(str::is_empty) {
        return bad("empty label (leading, trailing or doubled '.')");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: &str = "listen = [\"127.0.0.1:8080\"]\n";
    const ROUTE: &str = "[[route]]\nprefix = \"/ok\"\nbackends = [\"127.0.0.1:9\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "t.toml")
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The shape documented for operators and scripts, with every key present.
    const FULL: &str = r#"
listen = ["127.0.0.1:8080", "[::1]:8081"]
workers = 2
relay = "splice"
underscores_in_headers = false
[timeouts]
handshake = "10s"
connect = "500ms"
idle = "1h 30m"
half_close = "0"
[limits]
max_connections = 10000
max_head_bytes = "64 KiB"
max_headers = 50
[keepalive]
idle = "0"
interval = "10s"
count = 6
[splice]
max_pipes = 2500
pipe_size = "128KiB"
threshold = 8192
[[route]]
prefix = "/notice/"
host = "Example.COM"
backends = ["127.0.0.1:50001", "127.0.0.1:50002"]
strip_prefix = false
forwarded_for = "replace"
[[route]]
prefix = "/"
backends = ["127.0.0.1:50003"]
"#;

    #[test]
    fn full_example() {
        let cfg = parse(FULL).unwrap();
        let want = Config {
            listen: vec![
                "127.0.0.1:8080".parse().unwrap(),
                "[::1]:8081".parse().unwrap(),
            ],
            workers: Some(2),
            worker_model: WorkerModel::Auto,
            timeouts: Timeouts {
                handshake: secs(10),
                connect: Duration::from_millis(500),
                idle: secs(5400),
                half_close: Duration::ZERO,
                drain: secs(30),
            },
            limits: Limits {
                max_connections: Some(10000),
                max_head_bytes: 65536,
                max_headers: 50,
                max_connections_per_ip: None,
            },
            keepalive: Keepalive {
                idle: Duration::ZERO,
                interval: secs(10),
                count: 6,
            },
            relay: Relay {
                mode: RelayMode::Splice,
                max_pipes: Some(2500),
                pipe_size: 131072,
                splice_threshold: 8192,
            },
            routes: vec![
                Route {
                    prefix: "/notice".into(),
                    host: Some("example.com".into()),
                    backends: vec![
                        "127.0.0.1:50001".parse().unwrap(),
                        "127.0.0.1:50002".parse().unwrap(),
                    ],
                    strip_prefix: false,
                    forwarded_for: ForwardedFor::Replace,
                    send_proxy: None,
                },
                Route {
                    prefix: "/".into(),
                    host: None,
                    backends: vec!["127.0.0.1:50003".parse().unwrap()],
                    strip_prefix: true,
                    forwarded_for: ForwardedFor::Append,
                    send_proxy: None,
                },
            ],
            admin: None,
            access_log: None,
            trusted_proxies: Vec::new(),
            proxy_protocol: ProxyIn::default(),
            underscores_in_headers: false,
        };
        assert_eq!(cfg, want);
    }

    #[test]
    fn defaults() {
        let cfg = parse(&format!("{LISTEN}{ROUTE}")).unwrap();
        assert_eq!(cfg.workers, None);
        assert_eq!(
            cfg.timeouts,
            Timeouts {
                handshake: secs(10),
                connect: secs(5),
                idle: secs(3600),
                half_close: secs(30),
                drain: secs(30)
            }
        );
        assert_eq!(
            cfg.limits,
            Limits {
                max_connections: None,
                max_head_bytes: 16384,
                max_headers: 100,
                max_connections_per_ip: None
            }
        );
        assert_eq!(
            cfg.keepalive,
            Keepalive {
                idle: secs(60),
                interval: secs(10),
                count: 6
            }
        );
        assert_eq!(
            cfg.relay,
            Relay {
                mode: RelayMode::Auto,
                max_pipes: None,
                pipe_size: 65536,
                splice_threshold: 65536
            }
        );
        let route = &cfg.routes[0];
        assert!(route.strip_prefix);
        assert_eq!(route.forwarded_for, ForwardedFor::Append);
        assert_eq!(route.host, None);
        assert_eq!(cfg.timeouts, Timeouts::default());
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(cfg.keepalive, Keepalive::default());
        assert!(cfg.underscores_in_headers);
        assert_eq!(cfg.relay, Relay::default());
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("\"0\"", Duration::ZERO),
            ("0", Duration::ZERO),
            ("\"500ms\"", Duration::from_millis(500)),
            ("\"1h 30m\"", secs(5400)),
            ("\"1h30m\"", secs(5400)),
            ("\"2m\"", secs(120)),
            ("\" 45s \"", secs(45)),
        ] {
            let cfg = parse(&format!("{LISTEN}[timeouts]\nidle = {text}\n{ROUTE}")).unwrap();
            assert_eq!(cfg.timeouts.idle, want, "idle = {text}");
        }
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("16384", 16384),
            ("\"16384\"", 16384),
            ("\"16KiB\"", 16384),
            ("\"64 KiB\"", 65536),
            ("\"32k\"", 32768),
            ("\"1MiB\"", 1 << 20),
            ("\"1024 B\"", 1024),
        ] {
            let cfg = parse(&format!(
                "{LISTEN}[limits]\nmax_head_bytes = {text}\n{ROUTE}"
            ))
            .unwrap();
            assert_eq!(cfg.limits.max_head_bytes, want, "max_head_bytes = {text}");
        }
    }

    #[test]
    fn prefix_normalization() {
        for (given, want) in [
            ("/", "/"),
            ("/notice", "/notice"),
            ("/notice/", "/notice"),
            ("/notice//", "/notice"),
            ("//", "/"),
            ("/a/b/", "/a/b"),
            ("/%20x", "/%20x"),
        ] {
            let text =
                format!("{LISTEN}[[route]]\nprefix = {given:?}\nbackends = [\"127.0.0.1:9\"]\n");
            assert_eq!(
                parse(&text).unwrap().routes[0].prefix,
                want,
                "prefix {given:?}"
            );
        }
    }

    #[test]
    fn hosts() {
        for (given, want) in [
            ("example.com", "example.com"),
            ("WS.Example.COM", "ws.example.com"),
            ("10.0.0.1", "10.0.0.1"),
            ("[::1]", "[::1]"),
            ("my_host", "my_host"),
        ] {
            let text =
                format!("{LISTEN}[[route]]\nprefix = \"/\"\nhost = {given:?}\nbackends = [\"127.0.0.1:9\"]\n");
            assert_eq!(
                parse(&text).unwrap().routes[0].host.as_deref(),
                Some(want),
                "host {given:?}"
            );
        }
    }

    /// Each case: the document, then the line, key and a piece of the message the error must have.
    #[test]
    fn bad_values() {
        let r = ROUTE;
        let l = LISTEN;
        let cases: Vec<(String, Option<usize>, &str, &str)> = vec![
            // top level
            (format!("listen = []\n{r}"), Some(1), "listen", "at least one address"),
            (format!("listen = \"127.0.0.1:1\"\n{r}"), Some(1), "listen", "expected an array of addresses"),
            (format!("listen = [\n  \"127.0.0.1:1\",\n  \"nope\"]\n{r}"), Some(3), "listen", "invalid address \"nope\""),
            (format!("listen = [\"localhost:80\"]\n{r}"), Some(1), "listen", "use an IP address"),
            (format!("listen = [\"127.0.0.1\"]\n{r}"), Some(1), "listen", "missing port"),
            (format!("listen = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n{r}"), Some(1), "listen", "listed twice"),
            (format!("{l}workers = 0\n{r}"), Some(2), "workers", "between 1 and 1024, got 0"),
            (format!("{l}workers = 1025\n{r}"), Some(2), "workers", "between 1 and 1024"),
            (format!("{l}workers = \"2\"\n{r}"), Some(2), "workers", "expected an integer, found string \"2\""),
            (format!("{l}workers = -1\n{r}"), Some(2), "workers", "got -1"),
            (format!("{l}relay = \"fast\"\n{r}"), Some(2), "relay", "expected \"auto\", \"splice\" or \"copy\""),
            (format!("{l}underscores_in_headers = \"on\"\n{r}"), Some(2), "underscores_in_headers", "expected true or false"),
            // [timeouts]
            (format!("{l}[timeouts]\nidle = \"1x\"\n{r}"), Some(3), "timeouts.idle", "invalid duration \"1x\": expected a number followed by a unit such as 30s, 5m, 1h"),
            (format!("{l}[timeouts]\nidle = 10\n{r}"), Some(3), "timeouts.idle", "a number needs a unit"),
            (format!("{l}[timeouts]\nidle = \"10\"\n{r}"), Some(3), "timeouts.idle", "invalid duration"),
            (format!("{l}[timeouts]\nidle = true\n{r}"), Some(3), "timeouts.idle", "expected a duration"),
            (format!("{l}[timeouts]\nidle = \"400days\"\n{r}"), Some(3), "timeouts.idle", "at most 365 days"),
            (format!("{l}[timeouts]\nhandshake = \"0\"\n{r}"), Some(3), "timeouts.handshake", "greater than 0"),
            (format!("{l}[timeouts]\nconnect = 0\n{r}"), Some(3), "timeouts.connect", "greater than 0"),
            (format!("{l}[timeouts]\n\nhalf_close = \"-1s\"\n{r}"), Some(4), "timeouts.half_close", "invalid duration"),
            (format!("{l}timeouts = 5\n{r}"), Some(2), "timeouts", "expected a table"),
            // [limits]
            (format!("{l}[limits]\nmax_connections = 0\n{r}"), Some(3), "limits.max_connections", "at least 1"),
            (format!("{l}[limits]\nmax_head_bytes = 1023\n{r}"), Some(3), "limits.max_head_bytes", "between 1024 and 1048576"),
            (format!("{l}[limits]\nmax_head_bytes = \"2MiB\"\n{r}"), Some(3), "limits.max_head_bytes", "between 1024 and 1048576, got 2097152"),
            (format!("{l}[limits]\nmax_head_bytes = \"16 KB/s\"\n{r}"), Some(3), "limits.max_head_bytes", "invalid size"),
            (format!("{l}[limits]\nmax_head_bytes = \"KiB\"\n{r}"), Some(3), "limits.max_head_bytes", "invalid size"),
            (format!("{l}[limits]\nmax_head_bytes = 1.5\n{r}"), Some(3), "limits.max_head_bytes", "found float"),
            (format!("{l}[limits]\nmax_headers = 0\n{r}"), Some(3), "limits.max_headers", "between 1 and 1000"),
            (format!("{l}[limits]\nmax_headers = 1001\n{r}"), Some(3), "limits.max_headers", "between 1 and 1000"),
            // [keepalive]
            (format!("{l}[keepalive]\ncount = 0\n{r}"), Some(3), "keepalive.count", "between 1 and 127"),
            (format!("{l}[keepalive]\ncount = 128\n{r}"), Some(3), "keepalive.count", "between 1 and 127"),
            (format!("{l}[keepalive]\ninterval = \"0\"\n{r}"), Some(3), "keepalive.interval", "whole number of seconds"),
            (format!("{l}[keepalive]\nidle = \"1500ms\"\n{r}"), Some(3), "keepalive.idle", "whole number of seconds"),
            (format!("{l}[keepalive]\nidle = \"10h\"\n{r}"), Some(3), "keepalive.idle", "32767s"),
            // [splice]
            (format!("{l}[splice]\npipe_size = \"2KiB\"\n{r}"), Some(3), "splice.pipe_size", "between 4096 and 1048576"),
            (format!("{l}[splice]\npipe_size = \"2MiB\"\n{r}"), Some(3), "splice.pipe_size", "between 4096 and 1048576"),
            (format!("{l}[splice]\nthreshold = 0\n{r}"), Some(3), "splice.threshold", "at least 1"),
            (format!("{l}[splice]\nmax_pipes = -1\n{r}"), Some(3), "splice.max_pipes", "at least 0"),
            // [[route]]
            (format!("{l}[[route]]\nbackends = [\"127.0.0.1:9\"]\n"), Some(2), "route.prefix", "missing required key"),
            (format!("{l}[[route]]\nprefix = \"/a\"\n"), Some(2), "route.backends", "missing required key"),
            (format!("{l}[[route]]\nprefix = \"a\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "must start with '/'"),
            (format!("{l}[[route]]\nprefix = \"\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "must start with '/'"),
            (format!("{l}[[route]]\nprefix = \"/a?b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "'?'"),
            (format!("{l}[[route]]\nprefix = \"/a#b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "'#'"),
            (format!("{l}[[route]]\nprefix = \"/a b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "whitespace"),
            (format!("{l}[[route]]\nprefix = \"/a\\u0001\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "control"),
            (format!("{l}[[route]]\nprefix = \"/é\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(3), "route.prefix", "ASCII"),
            (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"a.com:80\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "port"),
            (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"a b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "invalid character ' '"),
            (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "must not be empty"),
            (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"a..b\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "empty label"),
            (format!("{l}[[route]]\nprefix = \"/\"\nhost = \"::1\"\nbackends = [\"127.0.0.1:9\"]\n"), Some(4), "route.host", "brackets"),
            (format!("{l}[[route]]\nprefix = \"/\"\nbackends = []\n"), Some(4), "route.backends", "at least one backend"),
            (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"backend.local:50001\"]\n"), Some(4), "route.backends", "use an IP address: name resolution is not supported yet"),
            (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"http://127.0.0.1:1/\"]\n"), Some(4), "route.backends", "scheme"),
            (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:0\"]\n"), Some(4), "route.backends", "non-zero port"),
            (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:9\"]\nstrip_prefix = \"yes\"\n"), Some(5), "route.strip_prefix", "expected true or false"),
            (format!("{l}[[route]]\nprefix = \"/\"\nbackends = [\"127.0.0.1:9\"]\nforwarded_for = \"set\"\n"), Some(5), "route.forwarded_for", "\"append\" or \"replace\""),
            (format!("{l}route = 1\n"), Some(2), "route", "expected [[route]] tables"),
            (format!("{l}route = [1]\n"), Some(2), "route", "expected a table"),
            // duplicates: the error names the second route, and the message the first one's line
            (format!("{l}{r}\n{r}"), Some(7), "route.prefix", "duplicate route: prefix \"/ok\" for any host is already defined on line 3"),
            (
                format!("{l}[[route]]\nprefix = \"/a/\"\nhost = \"x.com\"\nbackends = [\"127.0.0.1:9\"]\n[[route]]\nprefix = \"/a\"\nhost = \"X.com\"\nbackends = [\"127.0.0.1:8\"]\n"),
                Some(7),
                "route.prefix",
                "for host x.com is already defined on line 3",
            ),
            // missing things with no line to point at
            (r.to_string(), None, "listen", "missing required key"),
            (l.to_string(), None, "route", "at least one [[route]]"),
            (format!("{l}route = []\n"), None, "route", "at least one [[route]]"),
        ];
        for (text, line, key, msg) in &cases {
            let e = match parse(text) {
                Ok(cfg) => panic!("accepted:\n{text}\n=> {cfg:?}"),
                Err(e) => e,
            };
            assert_eq!(
                (e.line(), e.key()),
                (*line, Some(*key)),
                "error {e} for:\n{text}"
            );
            assert!(
                e.message().contains(msg),
                "error {e:?} lacks {msg:?} for:\n{text}"
            );
            assert_eq!(e.file(), Some("t.toml"));
        }
    }

    #[test]
    fn duplicate_routes_differ_by_host() {
        let text = format!(
            "{LISTEN}[[route]]\nprefix = \"/a\"\nhost = \"x.com\"\nbackends = [\"127.0.0.1:9\"]\n\
             [[route]]\nprefix = \"/a\"\nbackends = [\"127.0.0.1:9\"]\n"
        );
        assert_eq!(parse(&text).unwrap().routes.len(), 2);
    }

    #[test]
    fn unknown_keys() {
        for (text, line, key) in [
            (format!("listn = []\n{LISTEN}{ROUTE}"), 1, "listn"),
            (
                format!("{LISTEN}[timeouts]\nidle = \"1s\"\nidel = \"1s\"\n{ROUTE}"),
                4,
                "timeouts.idel",
            ),
            (
                format!("{LISTEN}[limits]\nmax_conns = 1\n{ROUTE}"),
                3,
                "limits.max_conns",
            ),
            (
                format!("{LISTEN}[keepalive]\ncnt = 1\n{ROUTE}"),
                3,
                "keepalive.cnt",
            ),
            (
                format!("{LISTEN}[splice]\nsize = 1\n{ROUTE}"),
                3,
                "splice.size",
            ),
            (format!("{LISTEN}{ROUTE}strip = true\n"), 5, "route.strip"),
            (
                format!("{LISTEN}timeouts = {{ idle = \"1s\", nope = 1 }}\n{ROUTE}"),
                2,
                "timeouts.nope",
            ),
            (format!("{LISTEN}[tls]\ncert = \"x\"\n{ROUTE}"), 2, "tls"),
            // reported in file order, not in the map's alphabetical order
            (format!("{LISTEN}zzz = 1\naaa = 1\n{ROUTE}"), 2, "zzz"),
        ] {
            let e = parse(&text).unwrap_err();
            assert_eq!(
                (e.line(), e.key()),
                (Some(line), Some(key)),
                "{e} for:\n{text}"
            );
            assert!(
                e.to_string().starts_with(&format!(
                    "t.toml:{line}: unknown key `{key}` (expected one of: "
                )),
                "{e}"
            );
        }
        let e = parse(&format!("listn = []\n{LISTEN}{ROUTE}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml:1: unknown key `listn` (expected one of: listen, workers, worker_model, relay, timeouts, limits, keepalive, splice, route, admin, access_log, trusted_proxies, proxy_protocol, underscores_in_headers)"
        );
    }

    #[test]
    fn worker_model() {
        let top = |v: &str| format!("{LISTEN}worker_model = {v}\n{ROUTE}");
        assert_eq!(
            parse(&top("\"processes\"")).unwrap().worker_model,
            WorkerModel::Processes
        );
        assert_eq!(
            parse(&top("\"threads\"")).unwrap().worker_model,
            WorkerModel::Threads
        );
        assert_eq!(
            parse(&format!("{LISTEN}{ROUTE}")).unwrap().worker_model,
            WorkerModel::Auto
        );
        let e = parse(&top("\"forks\"")).unwrap_err();
        assert_eq!(e.key(), Some("worker_model"));
        assert!(
            e.to_string()
                .contains("expected \"auto\", \"threads\" or \"processes\""),
            "{e}"
        );
    }

    #[test]
    fn error_format() {
        let e = parse(&format!(
            "{LISTEN}\n\n[timeouts]\n\n\nidle = \"1x\"\n{ROUTE}"
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml:7: timeouts.idle: invalid duration \"1x\": expected a number followed by a unit such as 30s, 5m, 1h"
        );
        let e = parse(ROUTE).unwrap_err();
        assert_eq!(e.to_string(), "t.toml: listen: missing required key");
    }

    #[test]
    fn syntax_errors() {
        for (text, line, msg) in [
            (format!("{LISTEN}workers = \n{ROUTE}"), 2, "invalid TOML"),
            (
                format!("{LISTEN}workers = 1\nworkers = 2\n{ROUTE}"),
                3,
                "duplicate key `workers`",
            ),
            (
                format!("{LISTEN}[timeouts]\n[timeouts]\n{ROUTE}"),
                3,
                "duplicate key",
            ),
            (
                format!("{LISTEN}{ROUTE}prefix = \"unterminated\n"),
                5,
                "invalid TOML",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert_eq!((e.line(), e.key()), (Some(line), None), "{e} for:\n{text}");
            assert!(e.message().contains(msg), "{e}");
        }
    }

    #[test]
    fn load_reports_path_and_os_error() {
        let e = Config::load(Path::new("/nonexistent/wsplice.toml")).unwrap_err();
        assert_eq!(e.file(), Some("/nonexistent/wsplice.toml"));
        let s = e.to_string();
        assert!(
            s.starts_with("/nonexistent/wsplice.toml: cannot read: "),
            "{s}"
        );
        assert!(s.contains("os error 2"), "{s}");
    }

    #[test]
    fn cli() {
        let listen = vec!["127.0.0.1:0".parse().unwrap()];
        let routes = [
            "/notice/=127.0.0.1:50001, 127.0.0.1:50002".to_owned(),
            "/msg=127.0.0.1:50003".to_owned(),
        ];
        let cfg =
            Config::from_cli(listen.clone(), &routes, Some(3), Some(RelayMode::Copy)).unwrap();
        assert_eq!(cfg.listen, listen);
        assert_eq!(cfg.workers, Some(3));
        assert_eq!(cfg.relay.mode, RelayMode::Copy);
        assert_eq!(cfg.timeouts, Timeouts::default());
        assert_eq!(cfg.routes.len(), 2);
        assert_eq!(cfg.routes[0].prefix, "/notice");
        assert_eq!(cfg.routes[0].backends.len(), 2);
        assert!(cfg.routes[0].strip_prefix);
        assert_eq!(
            cfg.routes[1].backends,
            vec!["127.0.0.1:50003".parse::<SocketAddr>().unwrap()]
        );

        for (listen, routes, workers, key, msg) in [
            (
                vec![],
                vec!["/=127.0.0.1:1"],
                None,
                "--listen",
                "at least one",
            ),
            (listen.clone(), vec![], None, "--route", "at least one"),
            (
                listen.clone(),
                vec!["/=127.0.0.1:1"],
                Some(0),
                "--workers",
                "invalid value 0",
            ),
            (
                listen.clone(),
                vec!["/notice"],
                None,
                "--route",
                "invalid value \"/notice\": expected PREFIX=HOST:PORT",
            ),
            (
                listen.clone(),
                vec!["notice=127.0.0.1:1"],
                None,
                "--route",
                "must start with '/'",
            ),
            (
                listen.clone(),
                vec!["/=localhost:1"],
                None,
                "--route",
                "use an IP address",
            ),
            (
                listen.clone(),
                vec!["/=127.0.0.1:1,"],
                None,
                "--route",
                "backend: invalid address \"\"",
            ),
            (
                listen.clone(),
                vec!["/a=127.0.0.1:1", "/a/=127.0.0.1:2"],
                None,
                "--route",
                "routed twice",
            ),
        ] {
            let routes: Vec<String> = routes.into_iter().map(str::to_owned).collect();
            let e = Config::from_cli(listen, &routes, workers, None).unwrap_err();
            assert_eq!(
                (e.file(), e.line(), e.key()),
                (None, None, Some(key)),
                "{e}"
            );
            assert!(e.message().contains(msg), "{e:?} lacks {msg:?}");
            assert!(e.to_string().starts_with(&format!("{key}: ")), "{e}");
        }
    }
}
