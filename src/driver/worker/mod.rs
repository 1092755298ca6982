//! What every driver shares: one worker's slab of connections, timer wheel, pipe pool, limits,
//! counters, access log, reload and drain. No event loop here: a driver ([`super::epoll`],
//! [`super::uring`]) turns readiness or completions into calls on [`Worker`], and executes the
//! I/O the worker's connections ask for through [`Driver`]: at once ([`Exec::Done`]), or
//! submitted and reported later ([`Exec::Submitted`], then [`Worker::completed`]).
//!
//! The worker never decides a protocol question: each connection's [`Conn`] does. It carries out
//! the bookkeeping steps itself (timers, admission, counters, the end) and hands the I/O steps to
//! the driver.

mod accept;
mod bookkeeping;
mod control;
mod drive;
mod handover;
mod tls;

use crate::core::conn::{Accept, Conn, Connecting, Event, Time};
use crate::core::handshake::ConnectFailure;
use crate::core::relay::{self, BufId, Ctx, IoOp, RelayStats, Side};
use crate::core::timer::{Clock, Tick, Wheel, TICK};
use crate::driver::access_log::LogSink;
use crate::driver::backends::BackendTable;
use crate::driver::limiter::{ConnLimiter, IpLimiter};
use crate::driver::memory::Budgeted;
use crate::driver::pool::BackendPool;
use crate::driver::routes::{RouteCounts, RouteSink};
use crate::driver::stats::{BackendSnapshot, Counters, Published};
use crate::driver::{Control, Params};
use crate::sys::pipe::{Pipe, PipePool};
use crate::sys::sock::{tune, tune_buffers, tune_listener};
use crate::transport::tls::{TlsBuffers, TlsSession};
use crate::transport::Transport;
use slab::Slab;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scratch buffer for the copy path and handshake reads: one per worker, never per connection.
const SCRATCH: usize = 64 * 1024;
/// How long accepting pauses after EMFILE/ENFILE before trying again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// A worker that held at least this many connections shrinks its tables once it is empty again.
const SHRINK_AFTER: usize = 256;
/// How often a busy worker publishes its counters (an idle one publishes before it sleeps), in
/// timer ticks (8 ms each: 16 ms), so that each wake-up compares ticks, not clock readings.
const PUBLISH_EVERY: u32 = 2;

/// Everything a worker needs, built by [`crate::driver::Server::start`].
pub struct WorkerConfig {
    pub id: usize,
    pub params: Params,
    /// (configured address, socket)
    pub listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    pub published: Arc<Published>,
    pub control: Receiver<Control>,
    pub limiter: Arc<IpLimiter>,
    pub total: Arc<ConnLimiter>,
    pub log: Option<LogSink>,
    pub published_backends: BackendSnapshot,
    /// Told once the driver is set up (its loop is about to wait), so that `ready` is printed
    /// only when every worker can serve.
    pub started: Option<std::sync::mpsc::SyncSender<()>>,
    pub published_routes: RouteSink,
}

/// What a driver watches: a connection's socket, or a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Conn(usize, Side),
    Listener(usize),
}

/// One I/O operation with the resources it needs, for the driver to execute.
pub struct IoCall<'a> {
    /// The connection asking (a completion driver reports back under this key).
    pub key: usize,
    pub op: IoOp,
    /// The socket the operation names (None: the backend socket does not exist).
    pub sock: Option<&'a mut dyn Transport>,
    /// The bytes of a `Write { src: Held }`.
    pub held: &'a [u8],
    /// The pipe of a splice.
    pub pipe: Option<&'a Pipe>,
    /// The worker's scratch buffer: reads land here, `Write { src: Scratch(n) }` sends from it.
    pub scratch: &'a mut [u8],
}

/// An [`IoCall`] on a plain socket.
pub struct PlainCall<'a> {
    pub key: usize,
    pub op: IoOp,
    pub sock: Option<&'a mut TcpStream>,
    pub held: &'a [u8],
    pub pipe: Option<&'a Pipe>,
    pub scratch: &'a mut [u8],
}

/// Bytes a completion driver received into one of its buffers.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub id: BufId,
    /// Where in the buffer they start.
    pub at: u32,
    /// How many bytes the buffer had room for (more than `bytes.len()`: the socket was drained).
    pub room: u32,
    pub bytes: &'a [u8],
}

/// How a driver carried out an operation.
#[derive(Debug)]
pub enum Exec {
    /// Done now: the result goes back to the connection at once.
    Done(io::Result<usize>),
    /// Submitted: the driver reports the result later, with [`Worker::completed`].
    Submitted,
}

/// What a driver does for a worker. The defaults are a readiness driver's (epoll).
pub trait Driver {
    /// Starts watching `fd` (a new socket or listener) under `w`.
    fn watch(&mut self, fd: BorrowedFd<'_>, w: Watch) -> io::Result<()>;
    /// Stops watching a listener (closing a socket stops watching it by itself).
    fn unwatch(&mut self, fd: BorrowedFd<'_>);
    /// Executes one operation, or submits it.
    fn exec(&mut self, call: IoCall<'_>) -> Exec;
    /// [`Driver::exec`] on a plain socket (the relay's short way, once per relayed message):
    /// a driver that executes at once may skip the call's indirection.
    #[inline]
    fn exec_plain(&mut self, call: PlainCall<'_>) -> Exec {
        let PlainCall {
            key,
            op,
            sock,
            held,
            pipe,
            scratch,
        } = call;
        self.exec(IoCall {
            key,
            op,
            sock: sock.map(|s| s as &mut dyn Transport),
            held,
            pipe,
            scratch,
        })
    }
    /// True when reads wait for bytes and writes for room rather than failing with
    /// `WouldBlock` (see [`Ctx::completion`]).
    fn completes(&self) -> bool {
        false
    }
    /// True when a copying relay direction keeps one receive standing ([`IoOp::Recv`], a
    /// multishot receive) instead of asking for a `Read` per message.
    fn standing(&self) -> bool {
        false
    }
    /// Starts connecting a new non-blocking socket to `addr` for connection `key`.
    /// `Connecting::Started`: readiness follows (then `CheckConnect`), or a completion does
    /// ([`Worker::connected`]).
    fn connect(&mut self, key: usize, addr: SocketAddr) -> io::Result<(TcpStream, Connecting)> {
        let s = crate::sys::sock::connect_nonblocking(addr)?;
        self.watch(s.as_fd(), Watch::Conn(key, Side::Backend))?;
        Ok((s, Connecting::Started))
    }
    /// Closes a socket that connection `key` is done with (what waits on it is cancelled).
    fn close(&mut self, _key: usize, _side: Side, sock: OwnedFd) {
        drop(sock);
    }
    /// A buffer of the driver's that a connection is done with.
    fn give_back(&mut self, _id: BufId) {}
    /// Cancels what is in flight on connection `key`'s socket `fd` (a binary upgrade takes the
    /// connection once nothing is): each operation still completes, cancelled or done.
    fn cancel(&mut self, _key: usize, _side: Side, _fd: BorrowedFd<'_>) {}
    /// Connection `key`'s socket `fd` leaves this worker open (handed to another process):
    /// stop watching it; nothing of it is reported under `key` any more.
    fn release(&mut self, _key: usize, _side: Side, fd: BorrowedFd<'_>) {
        self.unwatch(fd);
    }
    /// A copy of `len` bytes at `from` of buffer `id`, which a connection holds (for a
    /// hand-over).
    fn lent_bytes(&self, _id: BufId, _from: u32, _len: u32) -> Option<Vec<u8>> {
        None
    }
}

/// A connection's sockets and state: one slab entry.
struct Entry {
    client: TcpStream,
    backend: Option<TcpStream>,
    conn: Conn<Pipe>,
}

enum Slot {
    Live(Entry),
    /// Closed during this event batch: its sockets are gone, but its key stays taken until the
    /// batch is over, so a leftover event of the old sockets in the same batch cannot reach a new
    /// connection that would otherwise have reused the key.
    Dead,
}

/// One worker's state, whatever drives it.
pub struct Worker {
    id: usize,
    params: Params,
    published: Arc<Published>,
    control: Receiver<Control>,
    limiter: Arc<IpLimiter>,
    total: Arc<ConnLimiter>,
    log: Option<LogSink>,
    log_batch: String,
    backends: BackendTable,
    routes: RouteCounts,
    listeners: Vec<Option<(SocketAddr, TcpListener)>>,
    conns: Slab<Slot>,
    /// Keys of connections closed in this event batch (see [`Slot::Dead`]).
    dead: Vec<usize>,
    /// Connections that yielded: resumed after the batch.
    deferred: Vec<usize>,
    /// Most connections held since the last shrink.
    peak: usize,
    wheel: Wheel,
    fired: Vec<(u32, Tick)>,
    time: Time,
    /// Empty until a connection first needs it ([`scratch`]): an idle worker does not hold it.
    scratch: Box<[u8]>,
    /// Driver buffers connections are done with, handed back to the driver after each call.
    returned: Vec<BufId>,
    /// The pipe pool, behind the worker's share of `limits.max_memory`.
    pool: Budgeted,
    /// Set while a client refused for memory is answered, so its 503 is counted as such.
    refusing_for_memory: bool,
    /// Idle backend connections for plain HTTP requests.
    backend_pool: BackendPool,
    relay_stats: RelayStats,
    counters: Counters,
    accept_paused_until: Option<Instant>,
    /// When the counters are published next, and whether anything waits for it.
    publish_due: Tick,
    unpublished: bool,
    /// Something other than bytes moved in this loop (a step beyond I/O, an accept).
    changed: bool,
    /// The driver should try every listener again (descriptors were freed, or one was added).
    accept_wanted: bool,
    /// Every listener carries the current [`Tuning`](crate::sys::sock::Tuning), so accepted
    /// sockets inherit it from the kernel and need no setsockopt of their own (see
    /// [`Worker::tune_listeners`]).
    listeners_tuned: bool,
    /// Set by a drain request: no more accepting; close what is left at this instant.
    draining: Option<Instant>,
    /// Worker 0 watches the kernel's TCP memory pressure and warns of it.
    pressure: Option<crate::driver::pressure::Watch>,
    /// The TLS sessions of connections whose client came through a TLS listener, by key: kept
    /// beside the slab so that plain entries do not grow by a pointer they never use.
    tls: HashMap<usize, Box<TlsSession>>,
    /// What TLS sessions decrypt and encrypt in; allocated at the first TLS operation, freed
    /// with the other tables when the worker is empty.
    tls_bufs: Option<Box<TlsBuffers>>,
    /// The TLS sessions of backend connections whose route speaks TLS to its backends, by key.
    backend_tls: tls::BackendSessions,
    started: Option<std::sync::mpsc::SyncSender<()>>,
    /// Set by a binary upgrade: established tunnels go to the new process.
    handing: Option<crate::driver::HandOver>,
    /// Keys of the relays the hand-over's first sweep settled (established at the signal, they
    /// go once what they had in flight completed), sorted.
    at_signal: Vec<usize>,
}

fn is_no_fd(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

impl Worker {
    pub fn new(cfg: WorkerConfig) -> Worker {
        let now = Instant::now();
        let clock = Clock::new(now);
        let tick = clock.tick(now);
        let mut routes = RouteCounts::new(cfg.published_routes);
        routes.know(&cfg.params.settings.routes);
        let mut backends = BackendTable::new(cfg.published_backends);
        backends.set_routes(&cfg.params.settings.routes);
        let counters = Counters {
            drivers: [1, 0],
            ..Counters::default()
        };
        // An idle worker may not finish a loop iteration for a long time: what it is shows at
        // once.
        cfg.published.store(&counters);
        Worker {
            id: cfg.id,
            pool: Budgeted::new(
                PipePool::new(
                    cfg.params.max_pipes,
                    cfg.params.pipe_size,
                    cfg.params.large_pipes,
                ),
                cfg.params.memory,
            ),
            refusing_for_memory: false,
            backend_pool: BackendPool::new(cfg.params.pool_max_idle, cfg.params.pool_idle_timeout),
            params: cfg.params,
            published: cfg.published,
            control: cfg.control,
            limiter: cfg.limiter,
            total: cfg.total,
            log: cfg.log,
            log_batch: String::new(),
            backends,
            routes,
            listeners: cfg.listeners.into_iter().map(Some).collect(),
            conns: Slab::new(),
            dead: Vec::new(),
            deferred: Vec::new(),
            peak: 0,
            wheel: Wheel::new(tick),
            fired: Vec::new(),
            time: Time { now, tick, clock },
            scratch: Box::default(),
            returned: Vec::new(),
            relay_stats: RelayStats::default(),
            counters,
            accept_paused_until: None,
            publish_due: 0,
            unpublished: false,
            changed: false,
            accept_wanted: true,
            listeners_tuned: false,
            draining: None,
            pressure: (cfg.id == 0).then(|| crate::driver::pressure::Watch::new(now)),
            tls: HashMap::new(),
            tls_bufs: None,
            backend_tls: HashMap::new(),
            started: cfg.started,
            handing: None,
            at_signal: Vec::new(),
        }
    }

    /// The driver is set up (listeners watched, loop about to wait): tells whoever started
    /// the worker. A driver that fails before returns its error instead.
    pub fn set_up(&mut self) {
        if let Some(tx) = self.started.take() {
            let _ = tx.send(());
        }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    /// Sets the tunnels' socket options (TCP_NODELAY, keepalive, fixed buffer sizes) on every
    /// listener: Linux copies a listener's options into each socket it accepts, so an accepted
    /// client needs no setsockopt of its own (five fewer syscalls per connection). Called at
    /// start-up and after a reload changed them; if a listener refuses, accepted sockets are
    /// tuned one by one as before.
    pub(super) fn tune_listeners(&mut self) {
        let tuning = self.params.tuning;
        self.listeners_tuned = self
            .listeners
            .iter()
            .flatten()
            .all(|(_, l)| tune_listener(l, &tuning).is_ok());
    }

    /// Starts watching every listener (at start-up).
    pub fn watch_listeners(&mut self, d: &mut impl Driver) -> io::Result<()> {
        self.tune_listeners();
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some((_, l)) = l {
                d.watch(l.as_fd(), Watch::Listener(i))?;
            }
        }
        Ok(())
    }

    /// What an io_uring driver reports of itself, once per loop iteration (a worker counts as
    /// epoll's until it does).
    pub fn set_driver_stats(&mut self, uring: crate::driver::uring::UringStats) {
        let first = self.counters.drivers != [0, 1];
        self.counters.drivers = [0, 1];
        self.counters.uring = uring;
        if first {
            self.published.store(&self.counters);
        }
    }

    /// Reads the clock; call once per loop iteration, before handling its events.
    pub fn set_now(&mut self, now: Instant) {
        self.time.now = now;
        self.time.tick = self.time.clock.tick(now);
    }

    /// How long the driver may wait for events.
    pub fn timeout(&self) -> Option<Duration> {
        // `changed`: something happened outside a batch of events (the backlog accepted at the
        // top of the loop, e.g. the first clients after a start), and only the bookkeeping
        // after a batch publishes it: go round once more at once, or a client refused there
        // stays uncounted until the next event or timer.
        if !self.deferred.is_empty() || self.changed {
            return Some(Duration::ZERO);
        }
        let mut wait = self.wheel.next_wait(self.time.tick);
        if self.unpublished {
            // Into the tick it is due (the next publish may be up to a tick late).
            let ticks = self.publish_due.wrapping_sub(self.time.tick) as i32;
            let d = TICK * ticks.clamp(1, PUBLISH_EVERY as i32) as u32;
            wait = Some(wait.map_or(d, |w| w.min(d)));
        }
        // The rarer deadlines, each only when set (this runs on every wake-up).
        let mut sooner = |t: Instant| {
            let d = t.saturating_duration_since(self.time.now);
            wait = Some(wait.map_or(d, |w| w.min(d)));
        };
        if let Some(t) = self.accept_paused_until {
            sooner(t);
        }
        if let Some(t) = self.backend_pool.next_expiry() {
            sooner(t);
        }
        wait
    }

    // ---- events ----------------------------------------------------------------------------

    /// Readiness on one of connection `key`'s sockets.
    pub fn ready(&mut self, key: usize, ev: Event, d: &mut impl Driver) {
        let Some(Slot::Live(e)) = self.conns.get_mut(key) else {
            return; // a leftover event of sockets closed in this batch
        };
        if let Event::Ready {
            side: Side::Backend,
            readable,
            ..
        } = ev
        {
            // The backend connection parked between this client's requests: readable means
            // closed or sent something unasked, and it is dropped; the connection sees nothing.
            if e.backend.is_none() && self.backend_pool.is_parked(key) {
                if readable {
                    self.backend_pool.parked_event(key);
                }
                return;
            }
        }
        if let Event::Ready {
            side: Side::Client,
            writable: true,
            ..
        } = ev
        {
            // A TLS session's records the socket did not take go out before anything else; a
            // failure shows in the connection's next read or write.
            if !self.tls.is_empty() {
                if let Some(s) = self.tls.get_mut(&key) {
                    let _ = s.flush(&e.client);
                }
            }
        }
        let mut ev = ev;
        if let Event::Ready {
            side: Side::Backend,
            readable,
            writable,
            ..
        } = &mut ev
        {
            let session = if self.backend_tls.is_empty() {
                None // a plain-only worker skips the lookup (and its hashing)
            } else {
                self.backend_tls.get_mut(&key)
            };
            if let (Some(b), Some(sock)) = (session, e.backend.as_ref()) {
                if *writable {
                    let _ = b.session.flush(sock);
                }
                // The head's write waits for the backend's handshake flight: what arrived
                // lets it go on.
                if *readable && b.session.handshaking() {
                    *writable = true;
                }
            }
        }
        e.conn.handle(ev, &self.time);
        self.drive(key, d);
    }

    /// A submitted operation of connection `key` completed (a completion driver), or a standing
    /// receive's arrival came. `input`: where a read's bytes landed in a driver buffer.
    pub fn completed(
        &mut self,
        key: usize,
        op: IoOp,
        res: io::Result<usize>,
        input: Option<Input<'_>>,
        d: &mut impl Driver,
    ) {
        // A TLS connection reads through its session: never a standing receive.
        let standing = d.standing() && !self.has_tls(key);
        let Some(Slot::Live(e)) = self.conns.get_mut(key) else {
            if let Some(i) = input {
                d.give_back(i.id);
            }
            return;
        };
        let (scratch, lent, at, room) = match input {
            Some(i) => (i.bytes, Some(i.id), i.at, i.room),
            None => (&*scratch(&mut self.scratch), None, 0, 0),
        };
        let mut cx = ctx(
            scratch,
            &mut self.pool,
            &mut self.relay_stats,
            &mut self.returned,
            &self.params,
            (d.completes(), standing),
        );
        cx.lent = lent;
        cx.lent_at = at;
        cx.lent_room = room;
        e.conn.complete_io(op, res, &mut cx, &self.time);
        if let Some(id) = cx.lent {
            d.give_back(id); // the connection did not keep the bytes
        }
        self.give_back(d);
        self.drive(key, d);
    }

    /// The connect a completion driver started for connection `key` finished.
    pub fn connected(&mut self, key: usize, res: io::Result<()>, d: &mut impl Driver) {
        let Some(Slot::Live(e)) = self.conns.get_mut(key) else {
            return;
        };
        let c = match res {
            Ok(()) => Connecting::Connected,
            // As `check_connect` reads SO_ERROR: any error refuses this backend.
            Err(_) => Connecting::Failed(ConnectFailure::Refused),
        };
        e.conn.complete_connect(c, d.completes(), &self.time);
        self.drive(key, d);
    }

    /// Hands the driver buffers connections are done with back to the driver.
    fn give_back(&mut self, d: &mut impl Driver) {
        for id in self.returned.drain(..) {
            d.give_back(id);
        }
    }

    /// Starts a backend connect for connection `key` and reports how it went.
    fn connect_step(&mut self, key: usize, addr: SocketAddr, d: &mut impl Driver) {
        // A backend connection parked under this key would share its events.
        crate::driver::pool::detach(&mut self.backend_pool, key, self.time.now, d);
        let r = match self.connect(key, addr, d) {
            Ok((s, how)) => {
                if let Some(Slot::Live(e)) = self.conns.get_mut(key) {
                    e.backend = Some(s);
                }
                how
            }
            Err(why) => Connecting::Failed(why),
        };
        if let Some(Slot::Live(e)) = self.conns.get_mut(key) {
            e.conn.complete_connect(r, d.completes(), &self.time);
        }
    }

    fn connect(
        &mut self,
        key: usize,
        addr: SocketAddr,
        d: &mut impl Driver,
    ) -> Result<(TcpStream, Connecting), ConnectFailure> {
        let (s, how) = d.connect(key, addr).map_err(|e| {
            if is_no_fd(&e) {
                self.counters.connect_emfile += 1;
                ConnectFailure::NoDescriptors
            } else if e.kind() == io::ErrorKind::ConnectionRefused {
                ConnectFailure::Refused
            } else {
                ConnectFailure::Reset
            }
        })?;
        let _ = tune(&s, &self.params.tuning);
        Ok((s, how))
    }
}

/// [`ctx`] from the worker's own fields (a macro: the borrows stay split from `self.conns`).
/// `lend!(self, d, standing)` says whether receives may stand: not for a connection with a
/// TLS session, which reads through it.
macro_rules! lend {
    ($w:expr, $d:expr) => {
        lend!($w, $d, $d.standing())
    };
    ($w:expr, $d:expr, $standing:expr) => {
        ctx(
            &*$crate::driver::worker::scratch(&mut $w.scratch),
            &mut $w.pool,
            &mut $w.relay_stats,
            &mut $w.returned,
            &$w.params,
            ($d.completes(), $standing),
        )
    };
}
use lend;

/// The worker's scratch buffer, allocated at its first use: a worker that has served nothing
/// does not hold (and, allocated zeroed, touch) its 64 KiB (bench-results/2026-11-29-embedded-3).
fn scratch(buf: &mut Box<[u8]>) -> &mut [u8] {
    if buf.is_empty() {
        *buf = vec![0u8; SCRATCH].into_boxed_slice();
    }
    buf
}

/// What the worker lends a connection for one call (split borrows of the worker's fields).
fn ctx<'a>(
    scratch: &'a [u8],
    pool: &'a mut Budgeted,
    stats: &'a mut RelayStats,
    returned: &'a mut Vec<BufId>,
    params: &Params,
    (completion, standing): (bool, bool),
) -> Ctx<'a, Budgeted> {
    Ctx {
        scratch,
        lent: None,
        lent_at: 0,
        lent_room: 0,
        returned,
        pipes: pool,
        stats,
        mode: params.relay,
        threshold: params
            .splice_threshold
            .unwrap_or_else(|| relay::default_threshold(completion)),
        completion,
        standing,
    }
}

/// Asks a connecting socket whether its connect finished.
fn check_connect(s: Option<&TcpStream>) -> Connecting {
    let Some(s) = s else {
        return Connecting::Failed(ConnectFailure::Reset);
    };
    // One call when connected (the usual case); SO_ERROR only tells a failed connect from one
    // still under way. A socket that connected and then failed shows that on its first read
    // or write.
    match s.peer_addr() {
        Ok(_) => Connecting::Connected,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => match s.take_error() {
            Ok(Some(_)) | Err(_) => Connecting::Failed(ConnectFailure::Refused),
            Ok(None) => Connecting::Pending,
        },
        Err(_) => Connecting::Failed(ConnectFailure::Reset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slab entry of an idle relay is the whole per-connection cost in user space: keep it
    /// small. (bench-results/slab-entry.md explains each field.)
    #[test]
    fn idle_relay_slab_entry_is_small() {
        let slot = std::mem::size_of::<Slot>();
        let conn = std::mem::size_of::<Conn<Pipe>>();
        eprintln!("Slot {slot} B, Conn {conn} B");
        // Release: 104 B (the figure of the tree before the 2026-11 restructure). Debug builds
        // add a selector id to each mio socket.
        let limit = if cfg!(debug_assertions) { 128 } else { 104 };
        assert!(
            slot <= limit,
            "slab entry grew to {slot} bytes (limit {limit})"
        );
    }
}
