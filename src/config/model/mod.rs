//! The typed configuration the driver reads, and its defaults.
//!
//! Every field here is what a key in the TOML file (see the section tables in `root`, `sections`
//! and `route`) or a command-line flag (`cli`) sets; a key left out keeps the default below.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod route;
pub use route::*;

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

/// Which event loop runs the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverMode {
    /// epoll (mio), edge-triggered: every Linux.
    #[default]
    Epoll,
    /// io_uring: refuses to start where the kernel lacks it or forbids it.
    Uring,
    /// io_uring where the kernel allows it, else epoll (with one log line saying why).
    Auto,
}

/// The io_uring driver's ring of provided buffers: reads land there, and the relay sends
/// straight from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uring {
    /// One buffer: the most one receive takes (default 16 KiB).
    pub buffer_size: usize,
    /// All of one worker's buffers together, fixed at start-up (default 1 MiB). The count is
    /// `buffer_memory / buffer_size` rounded down to a power of two.
    pub buffer_memory: usize,
    /// Relays receive with one multishot receive per socket rather than one receive per
    /// message (default on). Each is limited to 64 KiB (`relay::RECV_LIMIT`) and armed again
    /// only once the destination took them, so a stalled reader costs at most that; the limit
    /// needs Linux 6.17, and older kernels get one receive per message whatever this says.
    pub multishot: bool,
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
    /// A keep-alive client connection may wait this long for its next request (default 60 s);
    /// then it is closed without an answer, as nginx's `keepalive_timeout`.
    pub client_idle: Duration,
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
    /// Memory the proxy may pin, bytes: its heap and the kernel memory of its sockets and pipes
    /// (see `driver::memory`). Beyond it new connections get 503 and pipes fall back to copying;
    /// `None`: no budget.
    pub max_memory: Option<u64>,
    /// Bytes a tunnel's socket may hold in its send queue unsent (TCP_NOTSENT_LOWAT, on both
    /// sockets of every connection): the relay writes more once the kernel has sent all but half
    /// of it. 0 (the default): the kernel's, as much as the send buffer holds (autotuned up to
    /// `net.ipv4.tcp_wmem`'s maximum). 256 KiB cut what 300 bulk echo tunnels left in wsplice's
    /// sockets from 3.6 GB to 1.0-1.4 GB and raised four bulk tunnels' throughput 5-18 %; the
    /// machine used 3-12 % less CPU, but the proxy process is charged 21-70 % more per GB (it
    /// sends at once what the peer's ACK otherwise sent later, in softirq). Not the default:
    /// forwarded 1 MiB HTTP responses lose 4-9 % of their rate with it
    /// (bench-results/2026-11-30-unsent, 2026-11-30-machine-w1).
    pub max_unsent: usize,
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
    /// F_SETPIPE_SZ for pooled pipes, bytes. `None`: 256 KiB, or the kernel's 64 KiB under
    /// `limits.max_memory` (see [`Config::pipe_size`]).
    pub pipe_size: Option<usize>,
    /// In `auto`, a burst (bytes waiting at one readiness) at least this large switches a
    /// direction to splice. `None`: the driver's own, 32 KiB under epoll and 4 KiB under
    /// io_uring ([`crate::core::relay::default_threshold`]; measured, see bench-results/README.md).
    pub splice_threshold: Option<usize>,
}

/// The per-worker pool of idle backend connections kept for plain HTTP requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPool {
    /// Idle connections kept per worker, all backends together (default 64; 0 disables reuse).
    pub max_idle: usize,
    /// An idle connection is closed after this (default 30 s; keep it below the backends' own
    /// keep-alive timeout, so that they rarely close a connection the proxy is about to reuse).
    pub idle_timeout: Duration,
}

impl Default for BackendPool {
    fn default() -> Self {
        BackendPool {
            max_idle: 64,
            idle_timeout: Duration::from_secs(30),
        }
    }
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

/// TLS termination (`wss://`): listeners and certificates. No `listen` address: off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Addresses whose clients speak TLS. Each is distinct from the plain `listen` addresses.
    pub listen: Vec<SocketAddr>,
    /// Certificate/key pairs, chosen by the SNI name against each certificate's DNS names
    /// (exact, or `*.example.com`). The first is the default certificate.
    pub certs: Vec<CertPair>,
    /// What a client gets whose SNI no certificate covers, or who sends none.
    pub unknown_sni: UnknownSni,
    /// Stateless session tickets, so a reconnecting client resumes without a full handshake
    /// (default true).
    pub session_tickets: bool,
    /// Plain listeners that answer every request with a redirect to https (the 80 -> 443
    /// setup). Distinct from `listen` and the TLS listeners.
    pub redirect_listen: Vec<SocketAddr>,
    /// The port of the https URL redirects point to; default: the first TLS listener's port
    /// (443 when there is none).
    pub redirect_port: Option<u16>,
}

/// One certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or SEC1;
/// RSA or ECDSA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The answer to a client whose SNI name no certificate covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSni {
    /// Serve the first certificate (what nginx and HAProxy do).
    #[default]
    Default,
    /// Refuse the handshake with an alert.
    Refuse,
}

impl UnknownSni {
    /// The config spelling: `default` or `refuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownSni::Default => "default",
            UnknownSni::Refuse => "refuse",
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            listen: Vec::new(),
            certs: Vec::new(),
            unknown_sni: UnknownSni::Default,
            session_tickets: true,
            redirect_listen: Vec::new(),
            redirect_port: None,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Workers; `None` = one per CPU core.
    pub workers: Option<usize>,
    /// Threads in one process or a process each.
    pub worker_model: WorkerModel,
    /// The event loop (default epoll).
    pub driver: DriverMode,
    /// The io_uring driver's buffers.
    pub uring: Uring,
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
    /// TLS listeners and certificates (`[tls]`, or `--tls-listen` with `--cert`/`--key`).
    pub tls: Tls,
    /// Idle backend connections kept for reuse by plain HTTP requests.
    pub backend_pool: BackendPool,
    /// Where backend names are looked up (`[dns]`).
    pub dns: super::Dns,
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
    /// Every model, in the order documented.
    pub const ALL: [WorkerModel; 3] = [
        WorkerModel::Auto,
        WorkerModel::Threads,
        WorkerModel::Processes,
    ];

    /// The config spelling: `auto`, `threads` or `processes`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerModel::Auto => "auto",
            WorkerModel::Threads => "threads",
            WorkerModel::Processes => "processes",
        }
    }
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
            client_idle: Duration::from_secs(60),
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
            max_memory: None,
            max_unsent: 0,
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
            pipe_size: None,
            splice_threshold: None,
        }
    }
}

impl Default for Uring {
    fn default() -> Self {
        Uring {
            buffer_size: 16 * 1024,
            buffer_memory: 1024 * 1024,
            multishot: true,
        }
    }
}

impl Uring {
    /// How many buffers `buffer_memory` holds: a power of two, 1 to 32768 (the kernel's cap).
    pub fn buffer_count(&self) -> u16 {
        let n = (self.buffer_memory / self.buffer_size.max(1)).clamp(1, 32768);
        // The largest power of two not above n.
        (1usize << (usize::BITS - 1 - n.leading_zeros())) as u16
    }
}

impl DriverMode {
    /// The config spelling: `epoll`, `uring` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverMode::Epoll => "epoll",
            DriverMode::Uring => "uring",
            DriverMode::Auto => "auto",
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

impl ForwardedFor {
    /// The config spelling: `append` or `replace`.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardedFor::Append => "append",
            ForwardedFor::Replace => "replace",
        }
    }
}

/// `Display` writes the config spelling, `as_str`.
macro_rules! display_as_str {
    ($($t:ty),+) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

display_as_str!(RelayMode, ForwardedFor, DriverMode);

impl Config {
    /// `[splice] pipe_size`, or its default: 256 KiB, the kernel's 64 KiB under
    /// `limits.max_memory` ([`crate::core::relay::default_pipe_size`]).
    pub fn pipe_size(&self) -> usize {
        self.relay.pipe_size.unwrap_or_else(|| {
            crate::core::relay::default_pipe_size(self.limits.max_memory.is_some())
        })
    }

    /// Every listen address, plain then TLS.
    pub fn all_listen(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listen
            .iter()
            .chain(&self.tls.listen)
            .chain(&self.tls.redirect_listen)
            .copied()
    }

    /// The port redirect listeners send clients to.
    pub fn https_port(&self) -> u16 {
        self.tls
            .redirect_port
            .or(self.tls.listen.first().map(|a| a.port()))
            .unwrap_or(443)
    }

    /// `listen` and `routes` as given, everything else at its default: the starting point for both
    /// the TOML file and the command line, so the two cannot disagree on a default.
    pub(super) fn with_defaults(listen: Vec<SocketAddr>, routes: Vec<Route>) -> Config {
        Config {
            listen,
            workers: None,
            worker_model: WorkerModel::Auto,
            driver: DriverMode::default(),
            uring: Uring::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            keepalive: Keepalive::default(),
            relay: Relay::default(),
            routes,
            admin: None,
            access_log: None,
            trusted_proxies: Vec::new(),
            proxy_protocol: ProxyIn::default(),
            underscores_in_headers: true,
            tls: Tls::default(),
            backend_pool: BackendPool::default(),
            dns: super::Dns::default(),
        }
    }
}

impl Route {
    /// A route matching any Host, stripping its prefix, appending to X-Forwarded-For and sending no
    /// PROXY header: what a `--route` flag builds and what a `[[route]]` starts from.
    pub(super) fn with_defaults(prefix: String, backends: Vec<SocketAddr>) -> Route {
        Route {
            prefix,
            host: None,
            backends,
            strip_prefix: true,
            forwarded_for: ForwardedFor::Append,
            send_proxy: None,
            options: RouteOptions::default(),
        }
    }
}

impl Default for AccessLog {
    /// Text lines on stdout.
    fn default() -> Self {
        AccessLog {
            path: "-".to_owned(),
            format: LogFormat::Text,
        }
    }
}
