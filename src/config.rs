//! Typed, validated configuration.
//!
//! Loaded from TOML (`wsplice --config FILE`) or built from command-line flags. Every error names the
//! file, the line and the key, so the operator knows which line to fix.
//!
//! NOTE (skeleton): the public types below are the contract the driver relies on. Loading, validation
//! and error reporting are implemented below them.

use std::net::SocketAddr;
use std::time::Duration;

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
    /// In `auto`, reads at least this large switch a direction to splice (default 16 KiB).
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
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Worker threads; `None` = one per CPU core.
    pub workers: Option<usize>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub keepalive: Keepalive,
    pub relay: Relay,
    pub routes: Vec<Route>,
}
