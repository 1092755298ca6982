//! The proxy under test: a `wsplice` child process started from a config the test builds, once
//! per relay mode with `e2e!`, and what the test asks of it afterwards (signals, stdout lines,
//! `/metrics`, its exit, its memory and descriptors).
//!
//! One launcher serves both kinds of test: [`ProxyBuilder::blocking_start`] for std-thread
//! tests, [`ProxyBuilder::start`] (the same, off the runtime's threads) for async ones.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::TEST_DEADLINE;

/// How long the proxy may take to print `ready`.
const START_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Running a scenario once per relay mode
// ---------------------------------------------------------------------------------------------

/// The proxy's `relay` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    Copy,
    Splice,
    Auto,
}

/// The proxy's `driver` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Epoll,
    Uring,
}

impl Driver {
    pub const ALL: [Driver; 2] = [Driver::Epoll, Driver::Uring];

    /// The top-level TOML lines that select this driver (io_uring runs with worker threads).
    pub fn toml(self) -> String {
        match self {
            Driver::Epoll => "driver = \"epoll\"\n".to_string(),
            Driver::Uring => "driver = \"uring\"\nworker_model = \"threads\"\n".to_string(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Epoll => "epoll",
            Driver::Uring => "uring",
        }
    }
}

/// How a scenario's proxy runs: its `relay` mode under its `driver`, the client on `ws://` or
/// `wss://`. `Relay::Copy`, `Relay::Splice` and `Relay::Auto` run under epoll; [`Relay::uring`]
/// moves one to io_uring; `Relay::Tls` puts the client on `wss://` to a TLS listener
/// (`relay = "auto"`: TLS tunnels copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    pub mode: RelayMode,
    pub driver: Driver,
    pub tls: bool,
    /// The backends speak TLS: each is reached through a local TLS terminator
    /// ([`super::tls::terminator`]) and the routes say `backend_tls = true`.
    pub backend_tls: bool,
}

// The constants read as the relay modes they were when `Relay` was an enum.
#[allow(non_upper_case_globals)]
impl Relay {
    pub const Copy: Relay = Relay::epoll(RelayMode::Copy);
    pub const Splice: Relay = Relay::epoll(RelayMode::Splice);
    pub const Auto: Relay = Relay::epoll(RelayMode::Auto);
    pub const Tls: Relay = Relay {
        mode: RelayMode::Auto,
        driver: Driver::Epoll,
        tls: true,
        backend_tls: false,
    };
    /// A `ws://` client, `wss://` backends.
    pub const TlsBackend: Relay = Relay {
        mode: RelayMode::Auto,
        driver: Driver::Epoll,
        tls: false,
        backend_tls: true,
    };
    /// A `wss://` client, `wss://` backends.
    pub const TlsBoth: Relay = Relay {
        mode: RelayMode::Auto,
        driver: Driver::Epoll,
        tls: true,
        backend_tls: true,
    };

    const fn epoll(mode: RelayMode) -> Relay {
        Relay {
            mode,
            driver: Driver::Epoll,
            tls: false,
            backend_tls: false,
        }
    }

    /// The same relay mode under io_uring.
    pub const fn uring(self) -> Relay {
        self.on(Driver::Uring)
    }

    /// This relay under `mode`.
    pub const fn with_mode(self, mode: RelayMode) -> Relay {
        Relay {
            mode,
            driver: self.driver,
            tls: self.tls,
            backend_tls: self.backend_tls,
        }
    }

    /// The same relay mode under `driver`.
    pub const fn on(self, driver: Driver) -> Relay {
        Relay {
            mode: self.mode,
            driver,
            tls: self.tls,
            backend_tls: self.backend_tls,
        }
    }

    /// The `relay` value.
    pub fn as_str(self) -> &'static str {
        match self.mode {
            RelayMode::Copy => "copy",
            RelayMode::Splice => "splice",
            RelayMode::Auto => "auto",
        }
    }
}

/// The `X-Forwarded-Proto` the backend hears.
pub fn proto(relay: Relay) -> &'static str {
    if relay.tls {
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
    if relay.driver == Driver::Uring && emulated() {
        // qemu-user does not emulate io_uring (and the gateway builds leave the driver out);
        // only this variant is skipped.
        eprintln!("skipped under emulation: the io_uring driver ({relay:?})");
        return;
    }
    if tokio::time::timeout(TEST_DEADLINE, body(relay))
        .await
        .is_err()
    {
        panic!(
            "scenario did not finish within {TEST_DEADLINE:?} (relay = {}, driver = {})",
            relay.as_str(),
            relay.driver.as_str()
        );
    }
}

/// Runs the wsplice binary with `args` to its end (a command such as `--check` or `import`).
pub fn wsplice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsplice"))
        .args(args)
        .output()
        .expect("run wsplice")
}

/// Bytes of a child's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A tokio runtime with `workers` threads, for a `#[test]` that drives its own async steps.
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `body` once under [`run`], relay mode `auto` and epoll, on its own runtime: for the
/// scenarios that do not depend on the relay mode.
pub fn run_auto<F, Fut>(body: F)
where
    F: FnOnce(Relay) -> Fut,
    Fut: Future<Output = ()>,
{
    runtime(2).block_on(run(Relay::Auto, body));
}

/// `e2e!(name, |relay| async move { ... })` expands to module `name` holding one test per relay
/// mode and driver: `name::copy`, `name::splice`, `name::auto` under epoll, and
/// `name::uring_copy`, `name::uring_splice`, `name::uring_auto` under io_uring.
#[allow(unused_macros)]
macro_rules! e2e {
    ($name:ident, $body:expr) => {
        e2e!($name, $body, plus []);
    };
    // Every relay mode under both drivers, and the `extra` variants after them.
    ($name:ident, $body:expr, plus [$($extra:ident => $extra_relay:expr),*]) => {
        e2e!($name, $body, [
            copy => crate::support::Relay::Copy,
            splice => crate::support::Relay::Splice,
            auto => crate::support::Relay::Auto,
            uring_copy => crate::support::Relay::Copy.uring(),
            uring_splice => crate::support::Relay::Splice.uring(),
            uring_auto => crate::support::Relay::Auto.uring()
            $(, $extra => $extra_relay)*
        ]);
    };
    ($name:ident, $body:expr, [$($test:ident => $relay:expr),+]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::support::run($relay, $body).await
                }
            )+
        }
    };
}

/// `drivers!(name, |driver| { ... })` expands to module `name` with one std-thread test per
/// driver: `name::epoll`, `name::uring`.
#[allow(unused_macros)]
macro_rules! drivers {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn epoll() {
                ($body)(crate::support::Driver::Epoll)
            }

            #[test]
            fn uring() {
                if crate::support::emulated() {
                    // qemu-user does not emulate io_uring; only this variant is skipped.
                    eprintln!("skipped under emulation: the io_uring driver");
                    return;
                }
                ($body)(crate::support::Driver::Uring)
            }
        }
    };
}

tokio::task_local! {
    /// The driver a [`scoped_drivers!`] scenario runs under.
    pub static SCOPED_DRIVER: Driver;
}

/// The top-level TOML lines selecting the driver of the [`scoped_drivers!`] scenario this runs
/// in; empty outside one (the config's default, epoll). For files that build their own configs.
pub fn scoped_driver_toml() -> String {
    SCOPED_DRIVER.try_with(|d| d.toml()).unwrap_or_default()
}

/// Only the `driver = ...` line of [`scoped_driver_toml`], for configs that choose their own
/// worker model (worker processes run under either driver).
pub fn scoped_driver_line() -> String {
    SCOPED_DRIVER
        .try_with(|d| format!("driver = \"{}\"\n", d.as_str()))
        .unwrap_or_default()
}

/// `scoped_drivers!(name)` next to `async fn name()`: module `name` with `name::epoll` and
/// `name::uring`, each running the scenario with [`SCOPED_DRIVER`] set, so that every config it
/// builds with [`scoped_driver_toml`] runs under that driver.
#[allow(unused_macros)]
macro_rules! scoped_drivers {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn epoll() {
                crate::support::SCOPED_DRIVER
                    .scope(crate::support::Driver::Epoll, super::$name())
                    .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn uring() {
                if crate::support::emulated() {
                    eprintln!("skipped under emulation: the io_uring driver");
                    return;
                }
                crate::support::SCOPED_DRIVER
                    .scope(crate::support::Driver::Uring, super::$name())
                    .await
            }
        }
    };
}

/// `e2e_drivers!(name, |relay| async move { ... })`: one test per driver with relay mode `auto`
/// (`name::epoll`, `name::uring`), for scenarios that do not depend on the relay mode (plain
/// HTTP forwarding, for one).
#[allow(unused_macros)]
macro_rules! e2e_drivers {
    ($name:ident, $body:expr) => {
        e2e!($name, $body, [
            epoll => crate::support::Relay::Auto,
            uring => crate::support::Relay::Auto.uring()
        ]);
    };
}

/// `e2e_tls!(name, body)`: [`e2e!`]'s tests (both drivers) plus `name::tls` and `name::uring_tls`,
/// the same scenario with the client on `wss://` (WebSocket clients speak TLS themselves, raw sockets go through
/// [`super::tls::shim`]).
#[allow(unused_macros)]
macro_rules! e2e_tls {
    ($name:ident, $body:expr) => {
        e2e!($name, $body, plus [
            tls => crate::support::Relay::Tls,
            uring_tls => crate::support::Relay::Tls.uring()
        ]);
    };
}

/// `e2e_tls_backend!(name, body)`: [`e2e_tls!`]'s tests plus `name::tls_backend` (a `ws://`
/// client, TLS backends) and `name::tls_both` (`wss://` client, TLS backends), each also under
/// io_uring (`name::uring_tls_backend`, `name::uring_tls_both`).
#[allow(unused_macros)]
macro_rules! e2e_tls_backend {
    ($name:ident, $body:expr) => {
        e2e!($name, $body, plus [
            tls => crate::support::Relay::Tls,
            tls_backend => crate::support::Relay::TlsBackend,
            tls_both => crate::support::Relay::TlsBoth,
            uring_tls => crate::support::Relay::Tls.uring(),
            uring_tls_backend => crate::support::Relay::TlsBackend.uring(),
            uring_tls_both => crate::support::Relay::TlsBoth.uring()
        ]);
    };
}

// ---------------------------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------------------------

/// One `[[route]]` table.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    prefix: String,
    backends: Vec<SocketAddr>,
    strip_prefix: Option<bool>,
    forwarded_for: Option<&'static str>,
    host: Option<String>,
    send_proxy: Option<&'static str>,
    http: Option<bool>,
}

/// A route for `prefix` over `backends`, everything else left at its default.
pub fn route(prefix: &str, backends: &[SocketAddr]) -> RouteSpec {
    RouteSpec {
        prefix: prefix.to_owned(),
        backends: backends.to_vec(),
        strip_prefix: None,
        forwarded_for: None,
        host: None,
        send_proxy: None,
        http: None,
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
    /// `"v1"` or `"v2"`.
    pub fn send_proxy(mut self, version: &'static str) -> Self {
        self.send_proxy = Some(version);
        self
    }
    /// `http = false`: plain requests get 426, as on a WebSocket-only route.
    pub fn http(mut self, on: bool) -> Self {
        self.http = Some(on);
        self
    }
}

/// Builds the TOML for a proxy and starts it.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    /// `None` leaves `relay` out (the proxy's default).
    relay: Option<RelayMode>,
    /// `None` leaves `driver` out (the proxy's default, epoll).
    driver: Option<Driver>,
    /// The client speaks `wss://` to the proxy's only listener, a TLS one.
    tls: bool,
    /// The backends speak TLS (through terminators started by [`ProxyBuilder::start`]).
    backend_tls: bool,
    workers: usize,
    /// Top-level `key = value` lines, written as given.
    top: Vec<String>,
    /// `[table]`s in the order first named, each with its `key = value` lines.
    tables: Vec<(String, Vec<String>)>,
    routes: Vec<RouteSpec>,
    /// Run under `ulimit -n` with this many descriptors.
    open_files: Option<usize>,
}

impl Default for ProxyBuilder {
    /// The suite's defaults: 2 workers, the proxy's default relay mode, no routes.
    fn default() -> Self {
        ProxyBuilder {
            relay: None,
            driver: None,
            tls: false,
            backend_tls: false,
            workers: 2,
            top: Vec::new(),
            tables: Vec::new(),
            routes: Vec::new(),
            open_files: None,
        }
    }
}

impl ProxyBuilder {
    /// The relay mode and the driver.
    pub fn relay(mut self, relay: Relay) -> Self {
        self.relay = Some(relay.mode);
        self.driver = Some(relay.driver);
        self.tls = relay.tls;
        self.backend_tls = relay.backend_tls;
        self
    }
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = Some(driver);
        self
    }
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }
    /// A top-level `key = value` line; `value` is TOML as written (quote strings yourself).
    pub fn top(mut self, key: &str, value: &str) -> Self {
        self.top.push(format!("{key} = {value}\n"));
        self
    }
    /// An admin listener on an ephemeral port (for [`Proxy::metric`] and [`Proxy::scrape`]).
    pub fn admin(self) -> Self {
        self.top("admin", "\"127.0.0.1:0\"")
    }
    /// `key = value` in `[table]`; `value` is TOML as written (quote strings yourself).
    pub fn set(mut self, table: &str, key: &str, value: &str) -> Self {
        let line = format!("{key} = {value}\n");
        match self.tables.iter_mut().find(|(t, _)| t == table) {
            Some((_, lines)) => lines.push(line),
            None => self.tables.push((table.to_owned(), vec![line])),
        }
        self
    }
    /// `key` is one of `handshake`, `connect`, `idle`, `half_close`, `drain`; `value` a
    /// humantime string.
    pub fn timeout(self, key: &str, value: &str) -> Self {
        self.set("timeouts", key, &format!("\"{value}\""))
    }
    /// `key` is one of `max_head_bytes`, `max_headers`, `max_connections`, ...
    pub fn limit(self, key: &str, value: usize) -> Self {
        self.set("limits", key, &value.to_string())
    }
    pub fn route(mut self, route: RouteSpec) -> Self {
        self.routes.push(route);
        self
    }
    /// Runs the proxy through `sh -c "ulimit -n N && exec wsplice ..."`.
    pub fn open_file_limit(mut self, n: usize) -> Self {
        self.open_files = Some(n);
        self
    }

    pub fn toml(&self) -> String {
        let tls = self.tls;
        // A TLS proxy's [tls] section has its only listener.
        let listen = if tls {
            ""
        } else {
            "listen = [\"127.0.0.1:0\"]\n"
        };
        let mut s = format!("{listen}workers = {}\n", self.workers);
        if let Some(mode) = self.relay {
            s.push_str(&format!(
                "relay = \"{}\"\n",
                Relay::Auto.with_mode(mode).as_str()
            ));
        }
        if let Some(driver) = self.driver {
            // A worker model set with `top` is the test's choice (io_uring runs either).
            if self.top.iter().any(|l| l.starts_with("worker_model ")) {
                s.push_str(&format!("driver = \"{}\"\n", driver.as_str()));
            } else {
                s.push_str(&driver.toml());
            }
        }
        for line in &self.top {
            s.push_str(line);
        }
        for (table, lines) in &self.tables {
            s.push_str(&format!("\n[{table}]\n"));
            for line in lines {
                s.push_str(line);
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
            if let Some(v) = r.send_proxy {
                s.push_str(&format!("send_proxy = \"{v}\"\n"));
            }
            if let Some(on) = r.http {
                s.push_str(&format!("http = {on}\n"));
            }
            if self.backend_tls {
                s.push_str(&format!(
                    "backend_tls = true\nbackend_ca = \"{}\"\nbackend_server_name = \"{}\"\n",
                    super::tls::shared().0.ca_file.display(),
                    super::tls::SERVER_NAME
                ));
            }
        }
        if tls {
            s.push_str(&super::tls::tls_section(&super::tls::shared().1, ""));
        }
        s
    }

    /// [`ProxyBuilder::blocking_start`] on tokio's blocking pool, so that the runtime's threads
    /// keep serving the test's backends meanwhile. A TLS proxy's raw-socket scenarios reach its
    /// listener through a local TLS shim: [`Proxy::addr`] is the shim's.
    pub async fn start(mut self) -> Proxy {
        if self.backend_tls {
            // Each backend behind its own TLS terminator (a refused port stays refused: the
            // terminator closes before its handshake when it cannot reach the backend).
            let pair = super::tls::shared().1.clone();
            for r in &mut self.routes {
                for b in &mut r.backends {
                    *b = super::tls::terminator(*b, pair.clone()).await;
                }
            }
        }
        let mut proxy = match tokio::task::spawn_blocking(move || self.blocking_start()).await {
            Ok(proxy) => proxy,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        if let Some(target) = proxy.tls {
            let client = super::tls::shared().0.client();
            proxy.addr = super::tls::shim(target, client).await;
        }
        proxy
    }

    /// [`ProxyBuilder::blocking_start`] with the binary at `program` (a copy the test may
    /// replace, for binary upgrades).
    pub fn blocking_start_from(self, program: &Path) -> Proxy {
        let toml = self.toml();
        let config = TempFile::new("toml", &toml);
        let mut cmd = Command::new(program);
        cmd.arg("--config").arg(config.path());
        Proxy::spawn(cmd, Some(config), toml)
    }

    /// Writes the config, spawns `wsplice --config FILE` and waits for `ready`.
    pub fn blocking_start(self) -> Proxy {
        let toml = self.toml();
        let config = TempFile::new("toml", &toml);
        // A config that names its model keeps it.
        let model = if toml.contains("worker_model") {
            Vec::new()
        } else {
            worker_model_args()
        };
        let cmd = match self.open_files {
            None => {
                let mut c = wsplice_command();
                c.arg("--config").arg(config.path()).args(&model);
                c
            }
            Some(n) => {
                let bin: Vec<String> = wsplice_argv().iter().map(|a| format!("'{a}'")).collect();
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!(
                    "ulimit -n {n} && exec {} --config '{}' {}",
                    bin.join(" "),
                    config.path().display(),
                    model.join(" ")
                ));
                c
            }
        };
        Proxy::spawn(cmd, Some(config), toml)
    }
}

// ---------------------------------------------------------------------------------------------
// The running proxy
// ---------------------------------------------------------------------------------------------

/// A running `wsplice` child process; killed on drop. Its stderr goes to a file, printed if the
/// test panics or the proxy exited without being asked to.
pub struct Proxy {
    child: Child,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    /// Removed on drop; rewritten by [`Proxy::write_config`].
    config: Option<TempFile>,
    log: TempFile,
    /// What the proxy was started with, for failure messages.
    description: String,
    /// Stdout lines after `ready` (`reloaded`, ...), read by a background thread. In a mutex
    /// so that tasks on several threads may share the proxy.
    lines: Mutex<Receiver<String>>,
    /// Set by [`Proxy::wait_exit`]: the test saw the exit it asked for.
    exited: bool,
    /// Stdout lines up to and including `ready` (the start-up report).
    startup: Vec<String>,
    /// The TLS listener, if the proxy has one.
    tls: Option<SocketAddr>,
}

impl Proxy {
    /// A builder with the suite's defaults and `relay`.
    pub fn builder(relay: Relay) -> ProxyBuilder {
        ProxyBuilder::default().relay(relay)
    }

    /// `wsplice ARGS` (a subcommand such as `demo` that prints the same start-up lines).
    pub async fn start_args(args: &[&str]) -> Proxy {
        let mut cmd = wsplice_command();
        cmd.args(args);
        let description = format!("wsplice {}\n", args.join(" "));
        match tokio::task::spawn_blocking(move || Proxy::spawn(cmd, None, description)).await {
            Ok(proxy) => proxy,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// [`Proxy::start_args`] for tests on std threads.
    pub fn blocking_start_args(args: &[&str]) -> Proxy {
        let mut cmd = wsplice_command();
        cmd.args(args);
        Proxy::spawn(cmd, None, format!("wsplice {}\n", args.join(" ")))
    }

    /// Spawns `cmd` and reads its stdout until `ready` (at most [`START_DEADLINE`]), taking the
    /// first `listen ADDR` line as the proxy's address and `admin ADDR` as the admin listener's.
    fn spawn(mut cmd: Command, config: Option<TempFile>, description: String) -> Proxy {
        raise_test_fd_limit();
        let log = TempFile::new("stderr", "");
        let stderr = std::fs::File::create(log.path()).expect("create proxy stderr log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        // A binary a test has just written (tests/upgrade.rs copies wsplice) may still be open
        // for writing in a child another test's thread forked meanwhile, until that child
        // execs: Linux then refuses to run it (ETXTBSY). It passes once the child has exec'd.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.expect("spawn wsplice"),
            }
        };
        let stdout = child.stdout.take().expect("child stdout");
        // The thread keeps draining stdout, so the proxy never blocks on a full pipe.
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut proxy = Proxy {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: None,
            config,
            log,
            description,
            lines: Mutex::new(lines),
            exited: false,
            startup: Vec::new(),
            tls: None,
        };

        let deadline = Instant::now() + START_DEADLINE;
        let (mut addr, mut seen) = (None, Vec::new());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = proxy.lines.lock().expect("stdout lines").recv_timeout(left);
            let line = match next {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => proxy.fail(&format!(
                    "no `ready` within {START_DEADLINE:?}; stdout so far: {seen:?}"
                )),
                Err(RecvTimeoutError::Disconnected) => {
                    proxy.fail(&format!("proxy exited before `ready`; stdout: {seen:?}"))
                }
            };
            if let Some(rest) = line.strip_prefix("listen ") {
                let a = rest.split_whitespace().next().unwrap_or_default();
                match a.parse() {
                    Ok(a) if line.ends_with(" tls") => {
                        proxy.tls = proxy.tls.or(Some(a));
                        addr = addr.or(Some(a));
                    }
                    Ok(a) => addr = addr.or(Some(a)),
                    Err(_) => proxy.fail(&format!("unparsable listen line {line:?}")),
                }
            }
            if let Some(rest) = line.strip_prefix("admin ") {
                match rest.trim().parse() {
                    Ok(a) => proxy.admin = Some(a),
                    Err(_) => proxy.fail(&format!("unparsable admin line {line:?}")),
                }
            }
            let ready = line.trim() == "ready";
            seen.push(line);
            if ready {
                break;
            }
        }
        match addr {
            Some(a) => proxy.addr = a,
            None => proxy.fail(&format!(
                "`ready` without a `listen` line; stdout: {seen:?}"
            )),
        }
        proxy.startup = seen;
        proxy
    }

    /// `wsplice --config FILE` with `toml` as it is (for configs the builder does not write).
    pub fn blocking_start_toml(toml: &str) -> Proxy {
        let config = TempFile::new("toml", toml);
        let mut cmd = wsplice_command();
        cmd.arg("--config").arg(config.path());
        if !toml.contains("worker_model") {
            cmd.args(worker_model_args());
        }
        Proxy::spawn(cmd, Some(config), toml.to_owned())
    }

    /// The start-up report: stdout lines up to and including `ready`.
    pub fn startup(&self) -> &[String] {
        &self.startup
    }

    /// The process holding the connections: the proxy itself with worker threads, its one
    /// worker process with worker processes (tests that use this run one worker).
    pub fn serving_pid(&self) -> u32 {
        match worker_pids(self.pid())[..] {
            [one] => one,
            _ => self.pid(),
        }
    }

    /// The proxy's pid and its worker processes' (none with threads).
    fn tree(&self) -> Vec<u32> {
        let mut all = vec![self.pid()];
        all.extend(worker_pids(self.pid()));
        all
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        match self.tls {
            Some(a) => format!("wss://{}:{}{}", super::tls::SERVER_NAME, a.port(), path),
            None => format!("ws://{}{}", self.addr(), path),
        }
    }

    /// The Host a WebSocket client of [`super::ws_connect`] sends.
    pub fn host(&self) -> String {
        match self.tls {
            Some(a) => format!("{}:{}", super::tls::SERVER_NAME, a.port()),
            None => self.addr().to_string(),
        }
    }

    /// The TLS listener, if the proxy has one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// True while the child process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Rewrites the config file (for a reload).
    pub fn write_config(&self, toml: &str) {
        let config = self
            .config
            .as_ref()
            .expect("the proxy runs from a config file");
        std::fs::write(config.path(), toml).expect("rewrite config");
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signal the proxy");
    }

    /// Waits for a stdout line that starts with one of `prefixes`; returns it. (After a binary
    /// upgrade the new process writes to the same stdout.)
    pub fn expect_line_starting(&self, prefixes: &[&str], within: Duration) -> String {
        self.expect_stdout(&format!("a line starting with {prefixes:?}"), within, |l| {
            prefixes.iter().any(|p| l.starts_with(p))
        })
    }

    /// Waits for a stdout line equal to one of `want`; returns it.
    pub fn expect_line(&self, want: &[&str], within: Duration) -> String {
        self.expect_stdout(&format!("a {want:?} line"), within, |l| want.contains(&l))
    }

    /// Waits up to `within` for the stdout line `is` accepts (`what`: which, for the failure).
    fn expect_stdout(&self, what: &str, within: Duration, is: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        let lines = self.lines.lock().expect("stdout lines");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if is(l.as_str()) => return l,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no {what} within {within:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("proxy stdout closed before {what}")
                }
            }
        }
    }

    /// Waits up to `within` for the exit the test asked for (a signal); fails the test if the
    /// proxy is still running then.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let status = wait_for_exit(&mut self.child, within)
            .unwrap_or_else(|| panic!("the proxy did not exit within {within:?}"));
        self.exited = true;
        status
    }

    /// One metric's value from `/metrics` (exact name including labels).
    pub fn metric(&self, name: &str) -> u64 {
        let body = self.scrape("/metrics");
        metric_in(&body, name).unwrap_or_else(|| panic!("no {name} in\n{body}"))
    }

    /// The admin listener's address, if the config has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Each `(sample, value)` as [`Proxy::metric`] reads it; a mismatch names the sample.
    pub fn assert_metrics(&self, want: &[(&str, u64)]) {
        for &(name, value) in want {
            assert_eq!(self.metric(name), value, "{name}");
        }
    }

    /// The body of an admin GET.
    pub fn scrape(&self, path: &str) -> String {
        let admin = self.admin.expect("the config has no admin listener");
        let mut s = TcpStream::connect(admin).expect("admin connect");
        write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").expect("admin request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("admin answer");
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    /// `VmRSS` of the proxy (with worker processes: of the whole process tree), bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.tree()
            .iter()
            .map(|pid| {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("VmRSS")
                    * 1024
            })
            .sum()
    }

    /// utime + stime of the proxy (and its worker processes), clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.tree()
            .iter()
            .map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
                let after = &stat[stat.rfind(')').expect("comm") + 2..];
                let f: Vec<&str> = after.split_whitespace().collect();
                f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
            })
            .sum()
    }

    /// The proxy's open descriptors (and its worker processes').
    pub fn fd_count(&self) -> usize {
        self.tree()
            .iter()
            .map(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        panic!(
            "wsplice failed to start: {what}\nstarted with:\n{}\nstderr:\n{}",
            self.description,
            self.stderr()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let crashed = !self.exited && !self.is_running();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || crashed {
            eprintln!(
                "---- wsplice {} (started with below) ----\n{}---- wsplice stderr ----\n{}",
                if crashed {
                    "EXITED DURING THE TEST"
                } else {
                    "still running"
                },
                self.description,
                self.stderr()
            );
        }
        assert!(
            std::thread::panicking() || !crashed,
            "wsplice exited during the test"
        );
    }
}

/// The program that runs the proxy: this build's `wsplice`, or the binary `WSPLICE_TEST_BIN`
/// names (a static cross build, see tools/test-emulated), started through the emulator
/// `WSPLICE_TEST_RUNNER` names (such as `qemu-aarch64-static`) when that is set.
pub fn wsplice_argv() -> Vec<String> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let bin = var("WSPLICE_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_wsplice").to_owned());
    var("WSPLICE_TEST_RUNNER")
        .into_iter()
        .chain([bin])
        .collect()
}

/// A [`Command`] for [`wsplice_argv`], arguments still to add.
pub fn wsplice_command() -> Command {
    let argv = wsplice_argv();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// True when the proxy runs under an emulator (`WSPLICE_TEST_RUNNER`): a test of what
/// emulation cannot show (the host process's memory is the emulator's) skips that part.
pub fn emulated() -> bool {
    std::env::var("WSPLICE_TEST_RUNNER").is_ok_and(|v| !v.is_empty())
}

/// `--worker-model MODEL` when `WSPLICE_TEST_WORKER_MODEL` is set (`threads` or `processes`):
/// the whole suite can run in either model; by default (and for a config that sets
/// `worker_model` itself) the config's choice stands.
pub fn worker_model_args() -> Vec<String> {
    match std::env::var("WSPLICE_TEST_WORKER_MODEL") {
        Ok(m) if !m.is_empty() => vec!["--worker-model".into(), m],
        _ => Vec::new(),
    }
}

/// The worker processes of a supervisor `pid` (none with threads), by /proc's parent links.
pub fn worker_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
        if after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

/// Waits up to `within` for `child` to exit; `None` if it is still running then.
pub fn wait_for_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file under the temp dir, unique to this process and call, removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    /// `wsplice-test-PID-N.EXT` holding `contents`.
    pub fn new(ext: &str, contents: &str) -> TempFile {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("wsplice-test-{}-{n}.{ext}", std::process::id()));
        std::fs::write(&path, contents).expect("write a temp file");
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
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

/// One metric's value (exact name including labels) in a `/metrics` body, if it is there.
pub fn metric_in(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}
