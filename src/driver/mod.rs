//! Event loops that turn the core's decisions into syscalls: epoll (mio) or io_uring, chosen by
//! the `driver` key; both run the same [`worker::Worker`].
//!
//! ```text
//!            SO_REUSEPORT: the kernel spreads accepts
//!      ┌─────────────┬──────────────┬─────────────┐
//!   worker 0      worker 1   ...  worker N-1        nothing shared on the hot path but
//!   Poll or Ring, Slab<Conn>, Wheel, PipePool       read-only Settings and published stats
//! ```
//!
//! Two ways to run the workers ([`WorkerModel`], chosen by [`choose_model`]):
//! - **threads** ([`Server`]): one process, one descriptor table for every worker;
//! - **processes** ([`supervisor`]): the process the operator starts binds the listeners, keeps
//!   them and supervises one process per worker ([`process`]), each with its own descriptor
//!   table. Limits, counters and per-backend stats live in [`shared`] memory.
pub mod access_log;
pub mod admin;
pub mod backends;
mod capacity;
mod choice;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(not(feature = "dns"))]
#[path = "dns_off.rs"]
pub mod dns;
pub mod epoll;
pub mod health;
pub mod limiter;
pub mod memory;
pub mod pool;
pub mod pressure;
pub mod process;
mod reader;
pub mod routes;
pub mod shared;
pub mod stats;
pub mod status;
pub mod supervisor;
pub mod upgrade;
#[cfg(feature = "uring")]
pub mod uring;
/// Without the `uring` feature (gateway builds): no io_uring driver, and `probe` says so.
#[cfg(not(feature = "uring"))]
#[path = "uring/off.rs"]
pub mod uring;
pub mod worker;

use reader::Source;
pub use reader::{StatsReader, WorkerInfo};

pub use crate::config::WorkerModel;
use crate::config::{Config, RelayMode};
use crate::core::handshake::Settings;
use crate::core::route::RouteTable;
use crate::sys::sock::{reuseport_listener, Tuning};
use crate::transport::tls::{BackendTlsTable, TicketKeys, TlsSettings};
pub use capacity::{capacity, choose_model, process_capacity, Capacity, ModelChoice};
pub use choice::{choose_driver, Chosen};
use limiter::{ConnLimiter, IpLimiter};
use mio::Waker;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// What a worker runs with; replaced as a whole by a reload.
#[derive(Debug, Clone)]
pub struct Params {
    pub settings: Arc<Settings>,
    /// `max_connections` for the whole process (enforced by a shared counter).
    pub max_connections: usize,
    /// This worker's share of the pipe budget.
    pub max_pipes: usize,
    pub pipe_size: usize,
    /// Of those, how many may be larger than the kernel's 64 KiB at once (this worker's share
    /// of `fs.pipe-user-pages-soft`, [`crate::core::relay::large_pipes`]).
    pub large_pipes: usize,
    pub relay: RelayMode,
    /// `None`: the driver's own default.
    pub splice_threshold: Option<usize>,
    pub tuning: Tuning,
    /// Listen addresses (as configured) whose clients must start with a PROXY header.
    pub proxy_listen: Vec<SocketAddr>,
    /// Some route sends PROXY headers or uwsgi packets: the local address of each connection is
    /// needed.
    pub send_proxy: bool,
    /// Listen addresses (as configured) whose clients speak TLS.
    pub tls_listen: Vec<SocketAddr>,
    /// Listen addresses (as configured) that answer with redirects to https.
    pub redirect_listen: Vec<SocketAddr>,
    /// `[tls] redirect_port`; without it, the first TLS listener's bound port.
    pub redirect_port: Option<u16>,
    /// Certificates and rustls settings for them; `None` without TLS listeners.
    pub tls: Option<Arc<TlsSettings>>,
    /// The rustls client settings of routes whose backends speak TLS, by route id.
    pub backend_tls: Arc<BackendTlsTable>,
    /// Idle backend connections this worker keeps for plain requests (0: none).
    pub pool_max_idle: usize,
    /// An idle pooled backend connection is closed after this.
    pub pool_idle_timeout: std::time::Duration,
    /// This worker's share of `limits.max_memory`, if one is set.
    pub memory: Option<memory::MemoryPlan>,
}

/// A new configuration for a worker.
#[derive(Debug)]
pub struct Reload {
    pub params: Params,
    /// Newly configured listeners: (configured address, this worker's socket).
    pub add: Vec<(SocketAddr, std::net::TcpListener)>,
    /// Configured addresses to stop listening on.
    pub remove: Vec<SocketAddr>,
    /// The worker answers here once the new configuration is in force.
    pub applied: Sender<usize>,
}

/// Messages from the control thread to a worker (sent, then the worker's waker is woken).
#[derive(Debug)]
pub enum Control {
    Reload(Box<Reload>),
    /// Stop accepting; close whatever is still open at this instant; then stop.
    Drain(Instant),
    /// A binary upgrade: stop accepting and hand established tunnels over ([`upgrade`]).
    HandOver(HandOver),
    /// Tunnels handed over by the process this one upgraded from.
    Adopt(Vec<upgrade::Tunnel>),
}

/// A worker's orders for a binary upgrade.
#[derive(Debug)]
pub struct HandOver {
    /// Batches of tunnels go here (the control thread sends them to the new process).
    pub out: Sender<upgrade::Batch>,
    /// Set when the new process stopped taking tunnels: keep the rest.
    pub abort: upgrade::Abort,
    /// What cannot be handed over (TLS tunnels, HTTP exchanges) is closed at this instant.
    pub until: Instant,
}

/// Wakes a worker's loop from another thread, whichever driver runs it (after sending it a
/// `Control`).
#[derive(Clone)]
pub(crate) enum Wake {
    Epoll(Arc<Waker>),
    Uring(Arc<uring::Waker>),
}

impl Wake {
    pub(crate) fn wake(&self) -> io::Result<()> {
        match self {
            Wake::Epoll(w) => w.wake(),
            Wake::Uring(w) => w.wake(),
        }
    }
}

struct WorkerHandle {
    backends: stats::BackendSnapshot,
    routes: stats::RouteSnapshot,
    control: Sender<Control>,
    waker: Wake,
    thread: Option<JoinHandle<io::Result<()>>>,
    published: Arc<stats::Published>,
}

/// A running proxy: one worker thread per configured worker.
pub struct Server {
    /// (configured address, bound address), in config order.
    listen: Vec<(SocketAddr, SocketAddr)>,
    workers: Vec<WorkerHandle>,
    limiter: Arc<IpLimiter>,
    total: Arc<ConnLimiter>,
    log: Option<access_log::LogSink>,
    log_thread: Option<JoinHandle<()>>,
    started: Instant,
    /// Session ticket keys: made once at start, kept across reloads, shared by every worker.
    tickets: Arc<TicketKeys>,
    /// The TLS settings in force (for the start-up report).
    tls: Option<Arc<TlsSettings>>,
    /// The configured TLS listen addresses.
    tls_addrs: Vec<SocketAddr>,
    driver: Chosen,
    /// Backend checks, ejections and drains.
    health: health::Health,
    /// A copy of every worker's listening socket, (configured address, socket): what a binary
    /// upgrade passes to the new process.
    /// Dropped at a drain: a socket nobody accepts from must not stay open.
    sockets: std::sync::Mutex<Vec<(SocketAddr, std::net::TcpListener)>>,
}

pub(crate) fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => " (another process listens there: stop it or change `listen`)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        io::ErrorKind::AddrNotAvailable => " (no local interface has this address)",
        _ => "",
    };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
}

/// The socket options a listener carries for the clients it accepts: keepalive (TCP_NODELAY is
/// always set); buffer sizes stay per socket (see [`crate::sys::sock::tune_listener`]).
pub(crate) fn listener_tuning(cfg: &Config) -> Tuning {
    Tuning {
        keepalive: (!cfg.keepalive.idle.is_zero()).then_some((
            cfg.keepalive.idle,
            cfg.keepalive.interval,
            cfg.keepalive.count,
        )),
        buffers: None,
        notsent_lowat: match cfg.limits.max_unsent {
            0 => None,
            n => Some(n as u32),
        },
    }
}

/// Binds `want` once per worker (SO_REUSEPORT); a port of 0 is resolved by the first socket and
/// shared by the others.
fn bind_all(
    want: SocketAddr,
    workers: usize,
    cfg: &Config,
) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let tuning = listener_tuning(cfg);
    let first = reuseport_listener(want, 4096, &tuning).map_err(|e| bind_error(want, e))?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(reuseport_listener(actual, 4096, &tuning).map_err(|e| bind_error(actual, e))?);
    }
    Ok((actual, all))
}

/// Loads the certificates of `cfg`'s TLS listeners, with the proxy's ticket keys. Errors name
/// the file; warnings (an expired certificate) are printed.
pub fn tls_for(cfg: &Config, tickets: &Arc<TicketKeys>) -> io::Result<Option<Arc<TlsSettings>>> {
    if cfg.tls.listen.is_empty() {
        return Ok(None);
    }
    let tls = TlsSettings::load(&cfg.tls, tickets)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    for w in &tls.warnings {
        eprintln!("wsplice: warning: {w}");
    }
    Ok(Some(Arc::new(tls)))
}

/// Builds the TLS settings of routes whose backends speak TLS (their CA files read now).
/// Errors name the route and the file.
pub fn backend_tls_for(cfg: &Config) -> io::Result<Arc<BackendTlsTable>> {
    BackendTlsTable::load(&cfg.routes)
        .map(Arc::new)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `fs.pipe-user-pages-soft`: the pipe pages one user may hold before its new pipes shrink to
/// two pages (0: no limit). Unreadable: Linux's default, 16,384.
pub fn pipe_user_pages_soft() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384)
}

fn nofile_now() -> u64 {
    crate::sys::limits::nofile_limit().map_or(1024, |(soft, _)| soft)
}

/// Threads: one process's budget split across `workers`.
fn params_for(
    cfg: &Config,
    workers: usize,
    tls: Option<Arc<TlsSettings>>,
    health: &health::Health,
    backend_tls: Arc<BackendTlsTable>,
) -> Params {
    let mut sized = cfg.clone();
    sized.workers = Some(workers);
    let cap = capacity(&sized, nofile_now());
    let routes = RouteTable::new(&cfg.routes).with_health(health.words());
    params_with(
        cfg,
        routes,
        (tls, backend_tls),
        cap.max_connections,
        (cap.max_pipes.div_ceil(workers), workers),
        memory_plan(cfg, workers, false),
    )
}

/// Each worker's share of `limits.max_memory` (None without one); `processes`: one process per
/// worker. The start-up footprint is this process's when it first asked (see
/// [`memory::start_rss`]).
pub fn memory_plan(cfg: &Config, workers: usize, processes: bool) -> Option<memory::MemoryPlan> {
    cfg.limits.max_memory.map(|max| {
        memory::MemoryPlan::new(
            max,
            workers,
            processes,
            memory::start_rss(),
            memory::SocketBuffers::from_sysctls(),
            cfg.limits.max_head_bytes,
            cfg.pipe_size(),
        )
    })
}

/// Processes: each worker has its own process's budget (see [`process_capacity`]); round-robin
/// cursors and `least_conn` loads live in `shared` memory (this is worker `worker`).
pub fn process_params(
    cfg: &Config,
    (shared, worker): (Arc<shared::Shared>, usize),
    tls: Option<Arc<TlsSettings>>,
    backend_tls: Arc<BackendTlsTable>,
) -> Params {
    let (per, total) = process_capacity(cfg, nofile_now());
    let load = Arc::new(shared::WorkerLoad {
        shared: shared.clone(),
        worker,
    });
    let routes = RouteTable::with_shared_cursors(&cfg.routes, shared.clone())
        .with_health(shared)
        .with_shared_load(load);
    let workers = cfg.workers.unwrap_or(1);
    let memory = memory_plan(cfg, workers, true);
    params_with(
        cfg,
        routes,
        (tls, backend_tls),
        total.max_connections,
        (per.max_pipes, workers),
        memory,
    )
}

fn params_with(
    cfg: &Config,
    routes: RouteTable,
    (tls, backend_tls): (Option<Arc<TlsSettings>>, Arc<BackendTlsTable>),
    max_connections: usize,
    (max_pipes, workers): (usize, usize),
    memory: Option<memory::MemoryPlan>,
) -> Params {
    let pipe_size = cfg.pipe_size();
    Params {
        settings: Arc::new(Settings {
            routes,
            timeouts: cfg.timeouts.clone(),
            max_head_bytes: cfg.limits.max_head_bytes,
            max_headers: cfg.limits.max_headers,
            trusted_proxies: cfg.trusted_proxies.clone(),
            proxy_trusted: cfg.proxy_protocol.trusted.clone(),
            underscores_in_headers: cfg.underscores_in_headers,
            backend_reuse: cfg.backend_pool.max_idle > 0,
        }),
        pool_max_idle: cfg.backend_pool.max_idle,
        pool_idle_timeout: cfg.backend_pool.idle_timeout,
        proxy_listen: cfg.proxy_protocol.listen.clone(),
        send_proxy: cfg.routes.iter().any(|r| {
            r.send_proxy.is_some() || r.options.protocol == crate::config::BackendProtocol::Uwsgi
        }),
        tls_listen: cfg.tls.listen.clone(),
        redirect_listen: cfg.tls.redirect_listen.clone(),
        redirect_port: cfg.tls.redirect_port,
        tls,
        backend_tls,
        max_connections,
        max_pipes,
        pipe_size,
        large_pipes: crate::core::relay::large_pipes(pipe_user_pages_soft(), pipe_size, workers),
        relay: cfg.relay.mode,
        splice_threshold: cfg.relay.splice_threshold,
        tuning: Tuning {
            // The budget charges each socket its buffers: they must not grow past that.
            buffers: memory.map(|m| (m.buffers.rcv, m.buffers.snd)),
            ..listener_tuning(cfg)
        },
        memory,
    }
}

impl Server {
    /// Binds every listener (SO_REUSEPORT, one socket per worker; a port of 0 is resolved once and
    /// shared by all workers) and starts the workers. Errors name the address that failed.
    pub fn start(cfg: &Config) -> io::Result<Server> {
        let (ticket_key, _) = TicketKeys::generate()
            .map_err(|_| io::Error::other("the system random generator failed (getrandom)"))?;
        Server::start_with_ticket_key(cfg, ticket_key)
    }

    /// [`Server::start`] with the 32 bytes session ticket keys derive from: every process
    /// handed the same bytes accepts the others' tickets.
    pub fn start_with_ticket_key(cfg: &Config, ticket_key: [u8; 32]) -> io::Result<Server> {
        Server::start_inherited(cfg, ticket_key, Vec::new())
    }

    /// [`Server::start_with_ticket_key`] on listening sockets a binary upgrade passed
    /// (configured address, socket): each configured address takes the sockets passed for it
    /// (the same accept queues as the old process's), spread over the workers; more are bound
    /// with SO_REUSEPORT if there are more workers than sockets.
    pub fn start_inherited(
        cfg: &Config,
        ticket_key: [u8; 32],
        mut inherited: Vec<(SocketAddr, std::net::TcpListener)>,
    ) -> io::Result<Server> {
        let workers = cfg
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let tickets = Arc::new(TicketKeys::from_bytes(ticket_key));
        let tls = tls_for(cfg, &tickets)?;
        let pairs = cfg.routes.iter().map(|r| r.backends.len()).sum();
        let table = crate::core::health::LocalHealth::for_backends(pairs);
        let health = health::Health::start(cfg, Arc::new(table))?;
        let params = params_for(cfg, workers, tls.clone(), &health, backend_tls_for(cfg)?);
        let driver = choose_driver(cfg)?;
        // Bind every socket first, so a bad address fails start-up before any thread runs.
        let mut per_worker: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut listen = Vec::new();
        let mut sockets = Vec::new();
        for want in cfg.all_listen() {
            let (actual, socks) = match upgrade::take_passed(&mut inherited, want, workers, cfg)? {
                Some(passed) => passed,
                None => bind_all(want, workers, cfg)?,
            };
            listen.push((want, actual));
            for (i, s) in socks.into_iter().enumerate() {
                sockets.push((want, s.try_clone()?));
                per_worker[i % workers].push((want, s));
            }
        }
        for (want, _) in &inherited {
            eprintln!(
                "wsplice: upgrade: the old process listened on {want}, which this configuration does not: closed"
            );
        }
        let (log, log_thread) = match &cfg.access_log {
            Some(a) => {
                let (sink, thread) = access_log::LogSink::start(a)?;
                (Some(sink), Some(thread))
            }
            None => (None, None),
        };
        health.set_log(log.clone());
        let limiter = Arc::new(IpLimiter::new(cfg.limits.max_connections_per_ip));
        let total = Arc::new(ConnLimiter::new(params.max_connections));
        let mut handles = Vec::new();
        for (id, listeners) in per_worker.into_iter().enumerate() {
            let published = Arc::new(stats::Published::default());
            let backends = Arc::new(std::sync::Mutex::new(Vec::new()));
            let routes = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (tx, rx) = std::sync::mpsc::channel();
            let (started_tx, started) = std::sync::mpsc::sync_channel(1);
            let wc = epoll::WorkerConfig {
                id,
                params: params.clone(),
                listeners,
                published: published.clone(),
                control: rx,
                limiter: limiter.clone(),
                total: total.clone(),
                log: log.clone(),
                published_backends: backends.clone(),
                started: Some(started_tx),
                published_routes: routes::RouteSink::Local(routes.clone()),
            };
            let name = format!("wsplice-w{id}");
            let (waker, thread) = match driver {
                Chosen::Epoll => {
                    let worker = epoll::Worker::new(wc)?;
                    let waker = Wake::Epoll(worker.waker());
                    let t = std::thread::Builder::new()
                        .name(name)
                        .spawn(move || worker.run())?;
                    (waker, t)
                }
                Chosen::Uring(_) => {
                    let worker = uring::Worker::new(wc, &cfg.uring)?;
                    let waker = Wake::Uring(worker.waker());
                    let t = std::thread::Builder::new()
                        .name(name)
                        .spawn(move || worker.run())?;
                    (waker, t)
                }
            };
            // `ready` means every worker serves: wait for this one's set-up (a ring that cannot
            // be built fails the start here, with its error).
            if started.recv().is_err() {
                let why = match thread.join() {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => io::Error::other("stopped"),
                    Err(_) => io::Error::other("panicked"),
                };
                return Err(io::Error::new(
                    why.kind(),
                    format!("worker {id} could not start: {why}"),
                ));
            }
            handles.push(WorkerHandle {
                backends,
                routes,
                control: tx,
                waker,
                thread: Some(thread),
                published,
            });
        }
        Ok(Server {
            listen,
            workers: handles,
            limiter,
            total,
            log,
            log_thread,
            started: Instant::now(),
            tickets,
            tls,
            tls_addrs: cfg.tls.listen.clone(),
            driver,
            health,
            sockets: std::sync::Mutex::new(sockets),
        })
    }

    /// The driver the workers run.
    pub fn driver(&self) -> Chosen {
        self.driver
    }

    /// The TLS settings in force, if TLS listeners are configured.
    pub fn tls(&self) -> Option<&TlsSettings> {
        self.tls.as_deref()
    }

    /// True when `bound` (a bound address, as [`Server::local_addrs`] lists it) is a TLS
    /// listener.
    pub fn is_tls(&self, bound: SocketAddr) -> bool {
        self.listen
            .iter()
            .any(|(want, got)| *got == bound && self.tls_addrs.contains(want))
    }

    /// The bound listener addresses, in config order (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listen.iter().map(|(_, a)| *a).collect()
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// When the server started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The workers' counters, summed.
    pub fn stats(&self) -> stats::Counters {
        stats::sum(self.workers.iter().map(|w| w.published.load()))
    }

    /// A handle that reads the counters from another thread (the admin listener).
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(
            Source::Threads {
                published: self.workers.iter().map(|w| w.published.clone()).collect(),
                backends: self.workers.iter().map(|w| w.backends.clone()).collect(),
                routes: self.workers.iter().map(|w| w.routes.clone()).collect(),
            },
            Some(self.health.clone()),
            Default::default(),
        )
    }

    fn send(&self, w: &WorkerHandle, msg: Control) {
        // A worker that already stopped has nothing left to change.
        if w.control.send(msg).is_ok() {
            let _ = w.waker.wake();
        }
    }

    /// Applies a new configuration to new connections. Established tunnels keep their sockets and
    /// their timeouts. New listen addresses are bound first: if one fails, nothing changes.
    /// Returns the listen addresses (configured, bound) now in force.
    pub fn reload(&mut self, cfg: &Config) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
        let n = self.workers.len();
        let mut added: Vec<(SocketAddr, SocketAddr, Vec<std::net::TcpListener>)> = Vec::new();
        // Certificates first: a bad file changes nothing.
        let tls = tls_for(cfg, &self.tickets)?;
        let backend_tls = backend_tls_for(cfg)?;
        for want in cfg.all_listen() {
            if !self.listen.iter().any(|(w, _)| *w == want) {
                let (actual, socks) = bind_all(want, n, cfg)?;
                added.push((want, actual, socks));
            }
        }
        let removed: Vec<SocketAddr> = self
            .listen
            .iter()
            .map(|(w, _)| *w)
            .filter(|w| !cfg.all_listen().any(|a| a == *w))
            .collect();
        let params = params_for(cfg, n, tls.clone(), &self.health, backend_tls);
        self.health.reload(cfg);
        self.tls = tls;
        self.tls_addrs = cfg.tls.listen.clone();
        self.limiter.set_limit(cfg.limits.max_connections_per_ip);
        self.total.set_max(params.max_connections);
        let mut per_worker: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        for (want, actual, socks) in added {
            self.listen.push((want, actual));
            for (w, s) in per_worker.iter_mut().zip(socks) {
                if let Ok(mut kept) = self.sockets.lock() {
                    kept.push((want, s.try_clone()?));
                }
                w.push((want, s));
            }
        }
        self.listen.retain(|(w, _)| !removed.contains(w));
        // A socket nobody accepts from must not stay open: its queue would hold clients.
        if let Ok(mut kept) = self.sockets.lock() {
            kept.retain(|(w, _)| !removed.contains(w));
        }
        let (applied, acks) = std::sync::mpsc::channel();
        for (w, add) in self.workers.iter().zip(per_worker) {
            let msg = Control::Reload(Box::new(Reload {
                params: params.clone(),
                add,
                remove: removed.clone(),
                applied: applied.clone(),
            }));
            self.send(w, msg);
        }
        drop(applied);
        // Report success only once every worker runs the new configuration.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        for _ in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            if acks.recv_timeout(left).is_err() {
                return Err(io::Error::other(
                    "a worker did not confirm the new configuration within 5 s (is it stuck or stopped?)",
                ));
            }
        }
        Ok(self.listen.clone())
    }

    /// Stops accepting now; tunnels may finish until `deadline`, then the rest are closed and
    /// the workers stop ([`Server::join`] returns).
    pub fn drain(&self, deadline: Instant) {
        // Closed at once: the workers stop accepting, and connects must be refused.
        if let Ok(mut kept) = self.sockets.lock() {
            kept.clear();
        }
        for w in &self.workers {
            self.send(w, Control::Drain(deadline));
        }
    }

    /// Reopens the access log file (SIGUSR1, after logrotate moved it). False: no access log.
    pub fn reopen_log(&self) -> bool {
        match &self.log {
            Some(l) => {
                l.reopen();
                true
            }
            None => false,
        }
    }

    /// Blocks until every worker has stopped.
    pub fn join(&mut self) {
        self.health.stop();
        for w in &mut self.workers {
            let Some(t) = w.thread.take() else { continue };
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("wsplice: worker stopped: {e}"),
                Err(_) => eprintln!("wsplice: worker panicked"),
            }
        }
        // Every worker is gone: once our own handle is dropped the logger drains its queue and
        // ends, so no line of the last connections is lost at exit.
        self.log = None;
        // The health board's handle on the log goes too, or the logger never ends.
        self.health.set_log(None);
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
    }
}
