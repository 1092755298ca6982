//! Shared helpers for the end-to-end tests.
//!
//! ```text
//!   test client ──TCP──▶ wsplice child process ──TCP──▶ in-process backend
//!   (tungstenite or raw)   (Proxy, config from TOML)      (EchoBackend, RawBackend,
//!                                                          RecordingBackend, RefusedPort, Blackhole)
//! ```
//!
//! Everything binds to 127.0.0.1 only. Every wait has a deadline, so a hung proxy fails a test
//! instead of hanging the suite.
#![allow(dead_code)]

pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The RFC 6455 sample key; 16 bytes once decoded.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Whole-test deadline applied by [`run`].
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);
/// How long any single network step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);
/// Largest message the tungstenite peers accept (the suite sends up to 16 MiB).
pub const MAX_MESSAGE: usize = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Running a scenario once per relay mode
// ---------------------------------------------------------------------------------------------

/// The proxy's `relay` setting, or a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    Copy,
    Splice,
    Auto,
    /// The client speaks `wss://` to a TLS listener (`relay = "auto"`: TLS tunnels copy).
    Tls,
}

impl Relay {
    /// The `relay` setting.
    pub fn as_str(self) -> &'static str {
        match self {
            Relay::Copy => "copy",
            Relay::Splice => "splice",
            Relay::Auto | Relay::Tls => "auto",
        }
    }
}

/// The `X-Forwarded-Proto` the backend hears.
pub fn proto(relay: Relay) -> &'static str {
    if relay == Relay::Tls {
        "https"
    } else {
        "http"
    }
}

/// Runs `body` under [`TEST_DEADLINE`].
pub async fn run<F, Fut>(relay: Relay, body: F)
where
    F: FnOnce(Relay) -> Fut,
    Fut: Future<Output = ()>,
{
    if tokio::time::timeout(TEST_DEADLINE, body(relay))
        .await
        .is_err()
    {
        panic!("scenario did not finish within {TEST_DEADLINE:?} ({relay:?})");
    }
}

/// `e2e!(name, |relay| async move { ... })` expands to module `name` holding one test per relay
/// mode: `name::copy`, `name::splice`, `name::auto`.
#[allow(unused_macros)]
macro_rules! e2e {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn copy() {
                crate::support::run(crate::support::Relay::Copy, $body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn splice() {
                crate::support::run(crate::support::Relay::Splice, $body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn auto() {
                crate::support::run(crate::support::Relay::Auto, $body).await
            }
        }
    };
}

/// `e2e_tls!(name, body)`: [`e2e!`]'s three tests plus `name::tls`, the same scenario with the
/// client on `wss://` (WebSocket clients speak TLS themselves, raw sockets go through
/// [`tls::shim`]).
#[allow(unused_macros)]
macro_rules! e2e_tls {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn copy() {
                crate::support::run(crate::support::Relay::Copy, $body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn splice() {
                crate::support::run(crate::support::Relay::Splice, $body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn auto() {
                crate::support::run(crate::support::Relay::Auto, $body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                crate::support::run(crate::support::Relay::Tls, $body).await
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------------------------

/// One `[[route]]` table.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    prefix: String,
    backends: Vec<SocketAddr>,
    strip_prefix: Option<bool>,
    forwarded_for: Option<&'static str>,
    host: Option<String>,
}

/// A route for `prefix` over `backends`, everything else left at its default.
pub fn route(prefix: &str, backends: &[SocketAddr]) -> RouteSpec {
    RouteSpec {
        prefix: prefix.to_owned(),
        backends: backends.to_vec(),
        strip_prefix: None,
        forwarded_for: None,
        host: None,
    }
}

impl RouteSpec {
    pub fn strip_prefix(mut self, strip: bool) -> Self {
        self.strip_prefix = Some(strip);
        self
    }
    /// `"append"` or `"replace"`.
    pub fn forwarded_for(mut self, mode: &'static str) -> Self {
        self.forwarded_for = Some(mode);
        self
    }
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }
}

/// Builds the TOML for a proxy and starts it.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    relay: Relay,
    workers: usize,
    timeouts: Vec<(&'static str, String)>,
    limits: Vec<(&'static str, usize)>,
    routes: Vec<RouteSpec>,
    /// Top-level `key = value` lines, written as given.
    top: Vec<String>,
}

impl ProxyBuilder {
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }
    /// `key` is one of `handshake`, `connect`, `idle`, `half_close`; `value` a humantime string.
    pub fn timeout(mut self, key: &'static str, value: &str) -> Self {
        self.timeouts.push((key, value.to_owned()));
        self
    }
    /// `key` is one of `max_head_bytes`, `max_headers`.
    pub fn limit(mut self, key: &'static str, value: usize) -> Self {
        self.limits.push((key, value));
        self
    }
    pub fn route(mut self, route: RouteSpec) -> Self {
        self.routes.push(route);
        self
    }
    /// A top-level `key = value` line; `value` is TOML as written (quote strings yourself).
    pub fn top(mut self, key: &str, value: &str) -> Self {
        self.top.push(format!("{key} = {value}\n"));
        self
    }

    pub fn toml(&self) -> String {
        let listen = if self.relay == Relay::Tls {
            "" // the [tls] section below has the only listener
        } else {
            "listen = [\"127.0.0.1:0\"]\n"
        };
        let mut s = format!(
            "{listen}workers = {}\nrelay = \"{}\"\n",
            self.workers,
            self.relay.as_str()
        );
        for line in &self.top {
            s.push_str(line);
        }
        if !self.timeouts.is_empty() {
            s.push_str("\n[timeouts]\n");
            for (k, v) in &self.timeouts {
                s.push_str(&format!("{k} = \"{v}\"\n"));
            }
        }
        if !self.limits.is_empty() {
            s.push_str("\n[limits]\n");
            for (k, v) in &self.limits {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        for r in &self.routes {
            let backends: Vec<String> = r.backends.iter().map(|b| format!("\"{b}\"")).collect();
            s.push_str(&format!(
                "\n[[route]]\nprefix = \"{}\"\nbackends = [{}]\n",
                r.prefix,
                backends.join(", ")
            ));
            if let Some(strip) = r.strip_prefix {
                s.push_str(&format!("strip_prefix = {strip}\n"));
            }
            if let Some(ff) = r.forwarded_for {
                s.push_str(&format!("forwarded_for = \"{ff}\"\n"));
            }
            if let Some(host) = &r.host {
                s.push_str(&format!("host = \"{host}\"\n"));
            }
        }
        if self.relay == Relay::Tls {
            s.push_str(&tls::tls_section(&tls::shared().1, ""));
        }
        s
    }

    /// Writes the config, spawns `wsplice --config FILE` and waits (10 s at most) for `ready`.
    pub async fn start(self) -> Proxy {
        raise_test_fd_limit();
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let toml = self.toml();
        let stem = format!(
            "wsplice-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let config = std::env::temp_dir().join(format!("{stem}.toml"));
        let log = std::env::temp_dir().join(format!("{stem}.stderr"));
        std::fs::write(&config, &toml).expect("write proxy config");
        let stderr = std::fs::File::create(&log).expect("create proxy stderr log");

        let mut child = Command::new(env!("CARGO_BIN_EXE_wsplice"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn wsplice");
        let stdout = child.stdout.take().expect("child stdout");
        let mut proxy = Proxy {
            child,
            addr: None,
            tls: None,
            config,
            log,
            toml,
        };

        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match tokio::time::timeout(left, lines.next_line()).await {
                Err(_) => proxy.fail(&format!("no `ready` within 10 s; stdout so far: {seen:?}")),
                Ok(Err(e)) => proxy.fail(&format!("reading proxy stdout: {e}")),
                Ok(Ok(None)) => {
                    proxy.fail(&format!("proxy exited before `ready`; stdout: {seen:?}"))
                }
                Ok(Ok(Some(line))) => line,
            };
            if let Some(rest) = line.strip_prefix("listen ") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                match addr.parse() {
                    Ok(a) if line.ends_with(" tls") => proxy.tls = Some(a),
                    Ok(a) => proxy.addr = Some(a),
                    Err(_) => proxy.fail(&format!("unparsable listen line {line:?}")),
                }
            }
            let ready = line.trim() == "ready";
            seen.push(line);
            if ready {
                break;
            }
        }
        if let Some(target) = proxy.tls {
            // Raw-socket scenarios reach the TLS listener through a local shim.
            proxy.addr = Some(tls::shim(target, tls::shared().0.client()).await);
        }
        if proxy.addr.is_none() {
            proxy.fail(&format!(
                "`ready` without a `listen` line; stdout: {seen:?}"
            ));
        }
        // Keep draining stdout so the proxy never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        proxy
    }
}

/// A running `wsplice` child process; killed on drop. Its stderr is printed if the test panics.
pub struct Proxy {
    child: Child,
    /// The plain listener, or for a TLS proxy the shim in front of it.
    addr: Option<SocketAddr>,
    /// The TLS listener, if the proxy has one.
    tls: Option<SocketAddr>,
    config: PathBuf,
    log: PathBuf,
    toml: String,
}

impl Proxy {
    /// Defaults for the suite: 2 workers, the given relay mode, no routes.
    pub fn builder(relay: Relay) -> ProxyBuilder {
        ProxyBuilder {
            relay,
            workers: 2,
            timeouts: Vec::new(),
            limits: Vec::new(),
            routes: Vec::new(),
            top: Vec::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("proxy address")
    }

    pub fn url(&self, path: &str) -> String {
        match self.tls {
            Some(a) => format!("wss://{}:{}{}", tls::SERVER_NAME, a.port(), path),
            None => format!("ws://{}{}", self.addr(), path),
        }
    }

    /// The Host a WebSocket client of [`ws_connect`] sends.
    pub fn host(&self) -> String {
        match self.tls {
            Some(a) => format!("{}:{}", tls::SERVER_NAME, a.port()),
            None => self.addr().to_string(),
        }
    }

    /// The TLS listener, if the proxy has one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running proxy has a pid")
    }

    /// The child's resident set size, bytes (`VmRSS` of /proc/PID/status).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// The proxy's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the child process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.start_kill();
        panic!(
            "wsplice failed to start: {what}\nconfig:\n{}\nstderr:\n{}",
            self.toml,
            self.stderr()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let crashed = !self.is_running();
        let _ = self.child.start_kill();
        if std::thread::panicking() || crashed {
            eprintln!(
                "---- wsplice {} (config below) ----\n{}---- wsplice stderr ----\n{}",
                if crashed {
                    "EXITED DURING THE TEST"
                } else {
                    "still running"
                },
                self.toml,
                self.stderr()
            );
        }
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
        assert!(
            std::thread::panicking() || !crashed,
            "wsplice exited during the test"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// What the echo backend's handshake callback saw.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    /// In the order `http::HeaderMap` yields them (names lower-cased).
    pub headers: Vec<(String, String)>,
}

/// Everything the echo backend observed.
#[derive(Debug, Clone, Default)]
pub struct EchoLog {
    pub connections: usize,
    pub requests: Vec<SeenRequest>,
    /// Close frames received from the client side: (code, reason).
    pub closes: Vec<Option<(u16, String)>>,
    pub pongs: Vec<Vec<u8>>,
}

/// A tokio-tungstenite echo server. Text commands: `__close__ CODE REASON` makes it close with
/// that code; `__ping__ PAYLOAD` makes it send a ping. Everything else is echoed.
pub struct EchoBackend {
    pub addr: SocketAddr,
    log: Arc<Mutex<EchoLog>>,
}

impl EchoBackend {
    pub async fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo backend");
        let addr = listener.local_addr().expect("echo backend addr");
        let log = Arc::new(Mutex::new(EchoLog::default()));
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().expect("echo log").connections += 1;
                tokio::spawn(echo_session(stream, shared.clone()));
            }
        });
        EchoBackend { addr, log }
    }

    pub fn log(&self) -> EchoLog {
        self.log.lock().expect("echo log").clone()
    }
}

// The callback's error type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn echo_session(stream: TcpStream, log: Arc<Mutex<EchoLog>>) {
    let _ = stream.set_nodelay(true);
    let seen = log.clone();
    let callback =
        move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
              resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            seen.lock().expect("echo log").requests.push(SeenRequest {
                method: req.method().as_str().to_owned(),
                target,
                headers,
            });
            Ok(resp)
        };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())).await
    else {
        return;
    };
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { break };
        match msg {
            Message::Text(t) if t.starts_with("__close__ ") => {
                let mut parts = t["__close__ ".len()..].splitn(2, ' ');
                let code: u16 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1000);
                let reason = parts.next().unwrap_or("").to_owned();
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                if ws.close(Some(frame)).await.is_err() {
                    break;
                }
            }
            Message::Text(t) if t.starts_with("__ping__ ") => {
                let payload = t["__ping__ ".len()..].as_bytes().to_vec();
                if ws.send(Message::Ping(payload.into())).await.is_err() {
                    break;
                }
            }
            m @ (Message::Text(_) | Message::Binary(_)) => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            Message::Pong(p) => log.lock().expect("echo log").pongs.push(p.to_vec()),
            Message::Close(f) => {
                log.lock()
                    .expect("echo log")
                    .closes
                    .push(f.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Message::Ping(_) | Message::Frame(_) => {}
        }
    }
}

/// What a [`RawBackend`] does with each accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Hand the connection to the test ([`RawBackend::next_conn`]).
    Manual,
    /// Reset it at once (SO_LINGER 0, close) without reading.
    Reset,
    /// Read the head, answer a valid 101, then echo raw bytes.
    Accept101Echo,
}

/// A raw TCP backend on 127.0.0.1:0 that counts connections.
pub struct RawBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    conns: tokio::sync::Mutex<mpsc::UnboundedReceiver<TcpStream>>,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawBackend {
    pub async fn start() -> RawBackend {
        RawBackend::start_with(Behavior::Manual).await
    }

    pub async fn start_with(behavior: Behavior) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw backend");
        let addr = listener.local_addr().expect("raw backend addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let (count, seen) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                match behavior {
                    Behavior::Manual => {
                        let _ = tx.send(stream);
                    }
                    Behavior::Reset => {
                        let _ = stream.set_zero_linger();
                        drop(stream);
                    }
                    Behavior::Accept101Echo => {
                        let seen = seen.clone();
                        tokio::spawn(async move {
                            let mut stream = stream;
                            let Ok((head, rest)) = try_read_head(&mut stream, 1 << 20).await else {
                                return;
                            };
                            seen.lock().expect("heads").push(head.clone());
                            if stream.write_all(&response_101(&head)).await.is_err() {
                                return;
                            }
                            if !rest.is_empty() && stream.write_all(&rest).await.is_err() {
                                return;
                            }
                            let (mut r, mut w) = stream.into_split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                    }
                }
            }
        });
        RawBackend {
            addr,
            accepted,
            conns: tokio::sync::Mutex::new(rx),
            heads,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Request heads read by an [`Behavior::Accept101Echo`] backend.
    pub fn heads(&self) -> Vec<Vec<u8>> {
        self.heads.lock().expect("heads").clone()
    }

    /// The next accepted connection ([`Behavior::Manual`] only); fails the test after [`STEP`].
    pub async fn next_conn(&self) -> TcpStream {
        let mut rx = self.conns.lock().await;
        match tokio::time::timeout(STEP, rx.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => panic!("raw backend accept loop ended"),
            Err(_) => panic!(
                "backend {} got no connection from the proxy within {STEP:?}",
                self.addr
            ),
        }
    }

    /// Accepts the next connection and reads its request head. Returns (stream, head, bytes read
    /// after the head).
    pub async fn next_head(&self) -> (TcpStream, Vec<u8>, Vec<u8>) {
        let mut s = self.next_conn().await;
        let (head, rest) = read_head(&mut s).await;
        (s, head, rest)
    }

    /// Accepts the next connection, reads its head and answers a valid 101.
    /// Returns (stream, head); fails if bytes followed the head before the 101.
    pub async fn accept_101(&self) -> (TcpStream, Vec<u8>) {
        let (mut s, head, rest) = self.next_head().await;
        assert!(
            rest.is_empty(),
            "backend got {} bytes after the head before answering 101",
            rest.len()
        );
        s.write_all(&response_101(&head))
            .await
            .expect("backend writes 101");
        (s, head)
    }
}

/// Counts connections and bytes; never answers. For "the backend received nothing".
pub struct RecordingBackend {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl RecordingBackend {
    pub async fn start() -> RecordingBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recording backend");
        let addr = listener.local_addr().expect("recording backend addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (c, b) = (connections.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        RecordingBackend {
            addr,
            connections,
            bytes,
        }
    }

    /// (connections accepted, bytes received) so far.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.connections.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

/// A port that refuses connections: bound (so nobody else gets it) but never listening.
pub struct RefusedPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&any.into()).expect("bind refused port");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet addr");
        RefusedPort {
            addr,
            _socket: socket,
        }
    }
}

/// A listener whose accept queue is full, so Linux drops further SYNs and connects time out.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Fills the queue and checks that a 300 ms connect attempt really times out.
    pub async fn start() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        listener.bind(&any.into()).expect("bind blackhole");
        listener.listen(0).expect("listen(0)");
        let addr = listener
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet addr");
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fillers.push(s),
                Ok(Err(e)) => panic!("blackhole: connect failed instead of hanging: {e}"),
                Err(_) => {
                    return Blackhole {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    }
                }
            }
        }
        panic!(
            "blackhole: accept queue never filled after {} connections",
            fillers.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP helpers
// ---------------------------------------------------------------------------------------------

/// A valid upgrade request for `path` with `Host: localhost`, plus `extra` header lines.
pub fn upgrade_request(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut s = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        s.push_str(line);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A valid 101 answering the request head `request` (its Sec-WebSocket-Key).
pub fn response_101(request: &[u8]) -> Vec<u8> {
    let key = header(request, "sec-websocket-key").unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes()
}

/// Header lines of a head (after the first line) as (name, value), values trimmed.
/// Splits on CRLF only; use [`assert_crlf_only`] first when that matters.
pub fn headers(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((k, v)) => (k.to_owned(), v.trim().to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect()
}

/// The first value of header `name` (case-insensitive).
pub fn header(head: &[u8], name: &str) -> Option<String> {
    headers(head)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Every value of header `name` (case-insensitive).
pub fn header_all(head: &[u8], name: &str) -> Vec<String> {
    headers(head)
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// The first line, without CRLF.
pub fn first_line(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n").next().unwrap_or_default().to_owned()
}

/// Every `\n` is preceded by `\r`, and the head ends with an empty line.
pub fn assert_crlf_only(head: &[u8]) {
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' {
            assert!(
                i > 0 && head[i - 1] == b'\r',
                "bare LF at offset {i} in head {:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
    assert!(
        head.ends_with(b"\r\n\r\n"),
        "head does not end with CRLF CRLF: {:?}",
        String::from_utf8_lossy(head)
    );
}

/// The status code of a response head, if its first line is `HTTP/1.1 NNN ...`.
pub fn status(resp: &[u8]) -> Option<u16> {
    let line = first_line(resp);
    let mut parts = line.splitn(3, ' ');
    if parts.next() != Some("HTTP/1.1") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads until CRLF CRLF; returns (head including the blank line, bytes already read past it).
pub async fn try_read_head(stream: &mut TcpStream, limit: usize) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > limit {
            return Err(io::Error::other(format!("head larger than {limit} bytes")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "EOF after {} bytes of head: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// [`try_read_head`] with a [`STEP`] deadline; fails the test on error.
pub async fn read_head(stream: &mut TcpStream) -> (Vec<u8>, Vec<u8>) {
    match tokio::time::timeout(STEP, try_read_head(stream, 1 << 20)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("reading a head: {e}"),
        Err(_) => panic!("no complete head within {STEP:?}"),
    }
}

/// How a read-until-end finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
}

/// Reads until EOF or reset, for at most `limit`; fails the test on timeout, printing what came.
pub async fn read_to_end(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, End) {
    match try_read_to_end(stream, limit).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Reads until EOF or reset, for at most `limit`; the error says what arrived meanwhile.
pub async fn try_read_to_end(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<(Vec<u8>, End), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "connection still open after {limit:?}; received {} bytes: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf[..buf.len().min(512)])
                ))
            }
            Ok(Ok(0)) => return Ok((buf, End::Eof)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok((buf, End::Reset))
            }
            Ok(Err(e)) => return Err(format!("read error {e} after {} bytes", buf.len())),
        }
    }
}

/// Reads exactly `n` bytes within [`STEP`].
pub async fn read_exact_n(stream: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(STEP, stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => buf,
        Ok(Err(e)) => panic!("{what}: reading {n} bytes: {e}"),
        Err(_) => panic!("{what}: {n} bytes did not arrive within {STEP:?}"),
    }
}

/// Asserts nothing arrives on `stream` for `wait` (the connection stays open and silent).
pub async fn assert_silent(stream: &mut TcpStream, wait: Duration, what: &str) {
    let mut b = [0u8; 1024];
    match tokio::time::timeout(wait, stream.read(&mut b)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("{what}: connection closed"),
        Ok(Ok(n)) => panic!(
            "{what}: unexpected {n} bytes {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Ok(Err(e)) => panic!("{what}: {e}"),
    }
}

/// Waits up to [`STEP`] for the peer to close (EOF or reset), discarding data; returns how long it took.
pub async fn wait_closed(stream: &mut TcpStream, what: &str) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 16384];
    loop {
        match tokio::time::timeout(STEP, stream.read(&mut chunk)).await {
            Err(_) => panic!("{what}: still open after {STEP:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// Polls `cond` every 10 ms for up to [`STEP`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {STEP:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects to the proxy with TCP_NODELAY.
pub async fn connect(proxy: &Proxy) -> TcpStream {
    let s = match tokio::time::timeout(STEP, TcpStream::connect(proxy.addr())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("connect to proxy: {e}"),
        Err(_) => panic!("connect to proxy timed out"),
    };
    let _ = s.set_nodelay(true);
    s
}

/// Sends `request` on a fresh connection and returns the whole answer (the proxy must close).
pub async fn send_and_read_all(proxy: &Proxy, request: &[u8]) -> (Vec<u8>, End) {
    let mut s = connect(proxy).await;
    s.write_all(request).await.expect("write request");
    read_to_end(&mut s, STEP).await
}

// ---------------------------------------------------------------------------------------------
// WebSocket helpers
// ---------------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<tls::ClientStream>;

/// A tokio-tungstenite client through the proxy to `path`; over TLS (rustls) to a TLS proxy.
pub async fn ws_connect(proxy: &Proxy, path: &str) -> Ws {
    let stream = match proxy.tls_addr() {
        Some(addr) => {
            let config = tls::shared().0.client();
            match tokio::time::timeout(STEP, tls::connect(addr, config, tls::SERVER_NAME)).await {
                Ok(Ok(s)) => tls::ClientStream::Tls(Box::new(s)),
                Ok(Err(e)) => panic!("TLS handshake with the proxy: {e}"),
                Err(_) => panic!("TLS handshake with the proxy timed out"),
            }
        }
        None => tls::ClientStream::Plain(connect(proxy).await),
    };
    let url = proxy.url(path);
    match tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config())),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => panic!("WebSocket handshake through the proxy to {url}: {e}"),
        Err(_) => panic!("WebSocket handshake through the proxy to {url} timed out"),
    }
}

/// The next message that is not a ping/pong, within [`STEP`].
pub async fn ws_recv(ws: &mut Ws) -> Message {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await {
            Err(_) => panic!("no message within {STEP:?}"),
            Ok(None) => panic!("stream ended"),
            Ok(Some(Err(e))) => panic!("receive error: {e}"),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(m))) => return m,
        }
    }
}

/// Sends one text message and expects it back.
pub async fn ws_echo_once(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned()))
        .await
        .expect("send text");
    match ws_recv(ws).await {
        Message::Text(t) => assert_eq!(t.as_str(), text, "echoed text differs"),
        other => panic!("expected the text echo, got {other:?}"),
    }
}

/// Deterministic bytes that make reordering or loss visible.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + (i >> 8) * 7) as u8).wrapping_add(seed))
        .collect()
}

/// A FIN frame with `opcode`, masked (client to server).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = frame_header(opcode, payload.len(), true);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A FIN frame with `opcode`, unmasked (server to client).
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame_header(opcode, payload.len(), false);
    f.extend_from_slice(payload);
    f
}

fn frame_header(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
    let m = if masked { 0x80 } else { 0 };
    let mut f = vec![0x80 | opcode];
    if len < 126 {
        f.push(m | len as u8);
    } else if len <= 0xffff {
        f.push(m | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(m | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f
}

// ---------------------------------------------------------------------------------------------
// Raw tunnels
// ---------------------------------------------------------------------------------------------

/// Both ends of a tunnel opened by hand through the proxy.
pub struct Tunnel {
    pub client: TcpStream,
    pub backend: TcpStream,
    /// What the backend received as the request head.
    pub backend_head: Vec<u8>,
}

/// Opens `path` through the proxy to a [`Behavior::Manual`] backend with a hand-made handshake.
pub async fn raw_tunnel(proxy: &Proxy, backend: &RawBackend, path: &str) -> Tunnel {
    let mut client = connect(proxy).await;
    client
        .write_all(&upgrade_request(path, &[]))
        .await
        .expect("client writes upgrade");
    let (backend_stream, backend_head) = backend.accept_101().await;
    let (resp, rest) = read_head(&mut client).await;
    assert_eq!(
        status(&resp),
        Some(101),
        "client got {:?}",
        String::from_utf8_lossy(&resp)
    );
    assert!(
        rest.is_empty(),
        "client got {} unexpected bytes after the 101",
        rest.len()
    );
    Tunnel {
        client,
        backend: backend_stream,
        backend_head,
    }
}

/// Writes `data` on `from` while reading the same number of bytes on `to`; asserts equality.
pub async fn pump(from: &mut TcpStream, to: &mut TcpStream, data: &[u8], what: &str) {
    let (got, wrote) = tokio::join!(
        async {
            let mut buf = vec![0u8; data.len()];
            tokio::time::timeout(STEP, to.read_exact(&mut buf))
                .await
                .map(|r| r.map(|_| buf))
        },
        async { tokio::time::timeout(STEP, from.write_all(data)).await }
    );
    match wrote {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{what}: write: {e}"),
        Err(_) => panic!(
            "{what}: write of {} bytes did not finish within {STEP:?}",
            data.len()
        ),
    }
    match got {
        Ok(Ok(buf)) => assert!(
            buf == data,
            "{what}: {} bytes arrived but differ",
            data.len()
        ),
        Ok(Err(e)) => panic!("{what}: read: {e}"),
        Err(_) => panic!(
            "{what}: {} bytes did not arrive within {STEP:?}",
            data.len()
        ),
    }
}

/// The tests hold thousands of sockets at once (1,000-tunnel reloads under three relay modes run
/// in parallel): take the hard open-file limit, as the proxy itself does, rather than fail on a
/// machine whose soft limit is the usual 1,024.
pub fn raise_test_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = wsplice::sys::limits::raise_nofile_limit() {
            eprintln!("could not raise the test process's open-file limit: {e}");
        }
    });
}
