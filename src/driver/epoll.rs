//! The epoll worker: one thread, one SO_REUSEPORT listener per configured address, one mio Poll
//! (edge-triggered), one slab of connections, one timer wheel, one pipe pool. Nothing here is
//! shared with other workers except read-only settings and the stats it publishes.

use crate::core::session::{Action, ConnectFailure, Handshake, Settings};
use crate::core::status::Reject;
use crate::core::timer::{at_or_before, Clock, Tick, Wheel};
use crate::core::tunnel::{self, Check, CloseReason, Times};
use crate::driver::access_log::LogSink;
use crate::driver::limiter::{ConnLimiter, IpLimiter};
use crate::driver::relay::{ConnLog, Ctx, Dir, Outcome, RelayStats, Tunnel};
use crate::driver::stats::{BackendCounts, BackendSnapshot, Counters, Published};
use crate::driver::{Control, Params};
use crate::sys::pipe::PipePool;
use crate::sys::sock::tune;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scratch buffer for the copy path and handshake reads: one per worker, never per connection.
const SCRATCH: usize = 64 * 1024;
/// How long a refused client gets to read its answer before we close (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
/// How long accepting pauses after EMFILE/ENFILE before trying again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const LISTENER_BASE: usize = usize::MAX - 1024;
/// A worker that held at least this many connections shrinks its tables once it is empty again.
const SHRINK_AFTER: usize = 256;
const WAKER: Token = Token(LISTENER_BASE - 1);

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
}

/// What the per-IP limit knows of a connection.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// The address the per-IP limiter counted this connection under (release it at the end).
    counted: Option<IpAddr>,
    /// A trusted load balancer's connection: counted under the client its PROXY header names,
    /// once that header has arrived, not under the balancer's own address.
    deferred: bool,
}

struct HsConn {
    client: TcpStream,
    backend: Option<TcpStream>,
    hs: Handshake,
    armed: Tick,
    /// The settings in force when the connection was accepted: a reload never changes the rules
    /// in the middle of a handshake.
    settings: Arc<Settings>,
    peer: Peer,
    /// The backend whose socket `backend` is (for per-backend counts).
    attempt: Option<SocketAddr>,
}

/// A connection being refused: its answer is written, then we linger briefly so the client can
/// read it before the close (closing with unread input would send RST and may destroy it).
struct Closing {
    client: TcpStream,
    peer: Peer,
    /// For the access log line, when one is written.
    log: Option<ConnLog>,
    reason: &'static str,
    out: Vec<u8>,
    pos: usize,
    shut: bool,
    /// End of the linger, and the due tick of its one wheel entry.
    until: Tick,
}

enum Conn {
    Handshake(Box<HsConn>),
    Tunnel(Tunnel),
    Closing(Box<Closing>),
    /// Closed during this event batch: its sockets are gone, but its key stays taken until the
    /// batch is over, so a leftover event of the old sockets in the same batch cannot reach a new
    /// connection that would otherwise have reused the key.
    Dead,
}

impl Conn {
    /// The due tick of this connection's live wheel entry.
    fn armed(&self) -> Option<Tick> {
        match self {
            Conn::Handshake(h) => Some(h.armed),
            Conn::Tunnel(t) => Some(t.armed),
            Conn::Closing(c) => Some(c.until),
            Conn::Dead => None,
        }
    }

    fn peer(&self) -> Option<Peer> {
        match self {
            Conn::Handshake(h) => Some(h.peer),
            Conn::Closing(c) => Some(c.peer),
            Conn::Tunnel(_) | Conn::Dead => None,
        }
    }
}

fn token(key: usize, backend: bool) -> Token {
    Token(key * 2 + backend as usize)
}

/// The PROXY header of a trusted balancer's connection has just been read: counts the client it
/// names against `max_connections_per_ip`, or refuses with 429 instead of `action` (which, if it
/// was a `Connect`, has not been started). LOCAL/UNKNOWN headers (health checks) are not counted.
fn count_proxied_client(h: &mut HsConn, limiter: &IpLimiter, action: Action) -> Action {
    h.peer.deferred = false;
    if !h.hs.client_from_proxy_header() {
        return action;
    }
    let ip = h.hs.client().ip();
    match limiter.acquire(ip) {
        Some(false) => h.hs.refuse(Reject::TooManyFromIp),
        Some(true) => {
            h.peer.counted = Some(ip);
            action
        }
        None => action,
    }
}

fn is_no_fd(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

pub struct Worker {
    id: usize,
    params: Params,
    published: Arc<Published>,
    control: Receiver<Control>,
    limiter: Arc<IpLimiter>,
    total: Arc<ConnLimiter>,
    log: Option<LogSink>,
    log_batch: String,
    backend_stats: Vec<(SocketAddr, BackendCounts)>,
    published_backends: BackendSnapshot,
    backends_dirty: bool,
    /// Most connections held since the last shrink.
    peak: usize,
    /// Keys of connections closed in this event batch (see [`Conn::Dead`]).
    dead: Vec<usize>,
    waker: Arc<Waker>,
    poll: Poll,
    listeners: Vec<Option<(SocketAddr, TcpListener)>>,
    conns: Slab<Conn>,
    wheel: Wheel,
    clock: Clock,
    now: Instant,
    tick: Tick,
    scratch: Box<[u8]>,
    pool: PipePool,
    relay_stats: RelayStats,
    counters: Counters,
    deferred: Vec<usize>,
    accept_paused_until: Option<Instant>,
    /// Set by a drain request: no more accepting; close what is left at this instant.
    draining: Option<Instant>,
}

impl Worker {
    pub fn new(cfg: WorkerConfig) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let now = Instant::now();
        let clock = Clock::new(now);
        let tick = clock.tick(now);
        let mut w = Worker {
            id: cfg.id,
            pool: PipePool::new(cfg.params.max_pipes, cfg.params.pipe_size),
            params: cfg.params,
            published: cfg.published,
            control: cfg.control,
            limiter: cfg.limiter,
            total: cfg.total,
            log: cfg.log,
            log_batch: String::new(),
            backend_stats: Vec::new(),
            published_backends: cfg.published_backends,
            backends_dirty: false,
            peak: 0,
            dead: Vec::new(),
            waker,
            poll,
            listeners: Vec::new(),
            conns: Slab::new(),
            wheel: Wheel::new(tick),
            clock,
            now,
            tick,
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
            relay_stats: RelayStats::default(),
            counters: Counters::default(),
            deferred: Vec::new(),
            accept_paused_until: None,
            draining: None,
        };
        for (addr, l) in cfg.listeners {
            w.add_listener(addr, l)?;
        }
        Ok(w)
    }

    /// Wakes this worker's loop from another thread (after sending it a [`Control`]).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    fn add_listener(&mut self, addr: SocketAddr, l: std::net::TcpListener) -> io::Result<()> {
        let i = match self.listeners.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.listeners.push(None);
                self.listeners.len() - 1
            }
        };
        let mut l = TcpListener::from_std(l);
        self.poll
            .registry()
            .register(&mut l, Token(LISTENER_BASE + i), Interest::READABLE)?;
        self.listeners[i] = Some((addr, l));
        // Edge-triggered: clients may already wait in the backlog.
        self.accept(i);
        Ok(())
    }

    fn remove_listener(&mut self, addr: SocketAddr) {
        for slot in &mut self.listeners {
            if slot.as_ref().is_some_and(|(a, _)| *a == addr) {
                if let Some((_, mut l)) = slot.take() {
                    let _ = self.poll.registry().deregister(&mut l);
                }
            }
        }
    }

    fn on_control(&mut self) {
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                Control::Reload(r) => {
                    let r = *r;
                    for addr in r.remove {
                        self.remove_listener(addr);
                    }
                    self.pool.set_limits(r.params.max_pipes, r.params.pipe_size);
                    self.params = r.params;
                    if self.draining.is_none() {
                        for (addr, l) in r.add {
                            if let Err(e) = self.add_listener(addr, l) {
                                eprintln!("wsplice: worker {}: cannot watch {addr}: {e}", self.id);
                            }
                        }
                    }
                    let _ = r.applied.send(self.id);
                }
                Control::Drain(until) => {
                    if self.draining.is_none() {
                        self.draining = Some(until);
                        let addrs: Vec<SocketAddr> =
                            self.listeners.iter().flatten().map(|(a, _)| *a).collect();
                        for a in addrs {
                            self.remove_listener(a);
                        }
                    }
                }
            }
        }
    }

    /// While draining: true once nothing is left or the drain time is over (then everything
    /// left is closed).
    fn drained(&mut self) -> bool {
        let Some(until) = self.draining else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        if self.now < until {
            return false;
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            match self.conns.get(k) {
                Some(Conn::Tunnel(_)) => self.close_tunnel(k, CloseReason::Drain),
                Some(Conn::Dead) | None => {}
                Some(_) => self.remove_conn(k),
            }
        }
        self.reap();
        true
    }

    /// Takes a connection out of the slab, leaving its key reserved ([`Conn::Dead`]) until
    /// [`Worker::reap`] at the end of the event batch.
    fn take_conn(&mut self, key: usize) -> Option<Conn> {
        let slot = self.conns.get_mut(key)?;
        if matches!(slot, Conn::Dead) {
            return None;
        }
        self.dead.push(key);
        Some(std::mem::replace(slot, Conn::Dead))
    }

    /// Frees the keys of connections closed during this batch.
    fn reap(&mut self) {
        for k in self.dead.drain(..) {
            self.conns.try_remove(k);
        }
    }

    /// Removes a non-tunnel connection (closing its sockets) and forgets it in the per-IP count.
    fn remove_conn(&mut self, key: usize) {
        if let Some(c) = self.take_conn(key) {
            self.total.release();
            if let Some(sink) = &self.log {
                let draining = self.draining.is_some();
                match &c {
                    Conn::Handshake(h) => {
                        let log = ConnLog {
                            client: h.hs.client(),
                            settings: h.settings.clone(),
                            route: h.hs.route(),
                            backend: h.hs.backend(),
                            status: 0,
                            started: h.hs.started(),
                            up: 0,
                            down: 0,
                        };
                        let reason = if draining { "drain" } else { "client_closed" };
                        log.write(sink, &mut self.log_batch, self.now, reason);
                    }
                    Conn::Closing(cl) => {
                        if let Some(log) = &cl.log {
                            log.write(sink, &mut self.log_batch, self.now, cl.reason);
                        }
                    }
                    Conn::Tunnel(_) | Conn::Dead => {}
                }
            }
            if let Some(ip) = c.peer().and_then(|p| p.counted) {
                self.limiter.release(ip);
            }
        }
        self.fds_freed();
    }

    /// Runs the loop until the process exits.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut fired: Vec<(u32, Tick)> = Vec::new();
        loop {
            let timeout = if !self.deferred.is_empty() {
                Some(Duration::ZERO)
            } else {
                let wheel = self.wheel.next_wait(self.tick);
                let pause = self
                    .accept_paused_until
                    .map(|t| t.saturating_duration_since(self.now));
                match (wheel, pause) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.now = Instant::now();
            self.tick = self.clock.tick(self.now);
            for ev in events.iter() {
                let t = ev.token().0;
                if ev.token() == WAKER {
                    self.on_control();
                    continue;
                }
                if t >= LISTENER_BASE {
                    self.accept(t - LISTENER_BASE);
                    continue;
                }
                let key = t / 2;
                let backend = t % 2 == 1;
                let hup = ev.is_read_closed() || ev.is_error();
                // EPOLLHUP/EPOLLERR: the peer is gone (reset or both directions closed), not
                // merely half-closed.
                let gone = ev.is_error() || ev.is_write_closed();
                self.on_event(key, backend, ev.is_readable() || hup, hup, gone);
            }
            let deferred = std::mem::take(&mut self.deferred);
            for key in deferred {
                if matches!(self.conns.get(key), Some(Conn::Tunnel(_))) {
                    self.pump_tunnel(key);
                }
            }
            fired.clear();
            let conns = &self.conns;
            self.wheel.expire_or_drop(
                self.tick,
                |k, due| fired.push((k, due)),
                |k, due| conns.get(k as usize).and_then(Conn::armed) == Some(due),
            );
            for &(key, due) in &fired {
                self.on_timer(key as usize, due);
            }
            if let Some(until) = self.accept_paused_until {
                if self.now >= until {
                    self.accept_paused_until = None;
                    self.accept_all();
                }
            }
            self.reap();
            let done = self.drained();
            self.shrink_when_idle();
            self.publish();
            if done {
                return Ok(());
            }
        }
    }

    /// After a burst, once this worker holds no connection at all, gives back what the burst
    /// grew: slab capacity, wheel slots, pooled pipes and free heap pages. An embedded box that
    /// saw 10,000 clients at 9 am should not keep their memory all day.
    fn shrink_when_idle(&mut self) {
        self.peak = self.peak.max(self.conns.len());
        if !self.conns.is_empty() || self.peak < SHRINK_AFTER {
            return;
        }
        self.peak = 0;
        self.conns.shrink_to_fit();
        self.wheel.shrink_to_fit();
        self.deferred.shrink_to_fit();
        self.pool.release_idle();
        crate::sys::mem::release_free_memory();
    }

    fn accept_all(&mut self) {
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
    }

    /// The worker-local index of a backend address (interned; stable for the worker's life).
    fn backend_id(&mut self, addr: SocketAddr) -> u16 {
        match self.backend_stats.iter().position(|(a, _)| *a == addr) {
            Some(i) => i as u16,
            None => {
                // u16::MAX means "no backend": more distinct backends than that share the last slot.
                if self.backend_stats.len() < u16::MAX as usize - 1 {
                    self.backend_stats.push((addr, BackendCounts::default()));
                }
                (self.backend_stats.len() - 1) as u16
            }
        }
    }

    fn backend_counts(&mut self, addr: SocketAddr) -> &mut BackendCounts {
        self.backends_dirty = true;
        let id = self.backend_id(addr) as usize;
        &mut self.backend_stats[id].1
    }

    fn publish(&mut self) {
        // Only when something changed (a worker with nothing to do sleeps without a timeout, so
        // a timed refresh would leave the last change unpublished). An uncontended lock and a
        // copy of a few entries, at most once per loop iteration.
        if self.backends_dirty {
            self.backends_dirty = false;
            if let Ok(mut p) = self.published_backends.lock() {
                p.clone_from(&self.backend_stats);
            }
        }
        if let Some(sink) = &self.log {
            self.counters.access_log_dropped += sink.flush(&mut self.log_batch);
        }
        self.counters.connections = self.conns.len() as u64;
        self.counters.relay = self.relay_stats;
        self.counters.pipes = self.pool.stats();
        self.published.store(&self.counters);
    }

    fn ctx(&mut self) -> (Ctx<'_>, &mut Slab<Conn>) {
        (
            Ctx {
                scratch: &mut self.scratch,
                pool: &mut self.pool,
                stats: &mut self.relay_stats,
                mode: self.params.relay,
                threshold: self.params.splice_threshold,
            },
            &mut self.conns,
        )
    }

    // ---- accepting -------------------------------------------------------------------------

    fn accept(&mut self, i: usize) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(&(configured, ref listener)) = self.listeners.get(i).and_then(Option::as_ref)
            else {
                return;
            };
            let (stream, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_no_fd(&e) => {
                    // Out of descriptors: pending clients stay in the backlog. Retrying at once
                    // would spin; wait a little or until one of ours closes.
                    self.counters.accept_emfile += 1;
                    self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
                    return;
                }
                Err(_) => {
                    // ECONNABORTED and friends concern one client only.
                    continue;
                }
            };
            self.counters.accepted += 1;
            if !self.total.acquire() {
                self.counters.rejected_full += 1;
                self.counters.count_reject(Reject::Overloaded);
                let _ = (&stream).write(Reject::Overloaded.response());
                continue;
            }
            let settings = self.params.settings.clone();
            let expect_proxy = self.params.proxy_listen.contains(&configured);
            // Behind a trusted balancer the TCP peer is the balancer: count the client its
            // PROXY header names instead (see `count_proxied_client`).
            let deferred = expect_proxy && settings.proxy_trusts(peer.ip());
            let counted = if deferred {
                None
            } else {
                match self.limiter.acquire(peer.ip()) {
                    Some(false) => {
                        self.total.release();
                        self.counters.count_reject(Reject::TooManyFromIp);
                        let _ = (&stream).write(Reject::TooManyFromIp.response());
                        continue;
                    }
                    Some(true) => Some(peer.ip()),
                    None => None,
                }
            };
            let _ = tune(&stream, &self.params.tuning);
            let local = if self.params.send_proxy {
                stream.local_addr().unwrap_or(configured)
            } else {
                configured
            };
            let hs = Handshake::accept(peer, local, expect_proxy, self.now, &settings);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let mut stream = stream;
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    token(key, false),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                if let Some(ip) = counted {
                    self.limiter.release(ip);
                }
                self.total.release();
                continue;
            }
            entry.insert(Conn::Handshake(Box::new(HsConn {
                client: stream,
                backend: None,
                hs,
                armed: 0,
                settings,
                attempt: None,
                peer: Peer { counted, deferred },
            })));
            self.arm_handshake(key);
            // Edge-triggered: the head may already be waiting.
            self.hs_client_readable(key);
        }
    }

    // ---- events ----------------------------------------------------------------------------

    fn on_event(&mut self, key: usize, backend: bool, readable: bool, hup: bool, gone: bool) {
        match self.conns.get_mut(key) {
            None => {}
            Some(Conn::Handshake(h)) => {
                if backend {
                    self.hs_backend_event(key);
                } else if gone && h.hs.client_read_limit(&h.settings) == 0 {
                    // The client reset while we talk to the backend. Edge-triggered: this event
                    // will not come again, so act now instead of waiting for the backend or the
                    // handshake timeout. (A FIN alone is not `gone`: a client may half-close
                    // while it waits for its 101.)
                    let a = h.hs.handle_client_eof();
                    self.apply(key, a);
                } else if readable {
                    self.hs_client_readable(key);
                }
            }
            Some(Conn::Tunnel(t)) => {
                if readable {
                    if backend {
                        t.down.readable(hup);
                    } else {
                        t.up.readable(hup);
                    }
                }
                self.pump_tunnel(key);
            }
            Some(Conn::Closing(_)) if !backend => self.progress_closing(key),
            Some(Conn::Closing(_)) => {} // its backend is already closed
            Some(Conn::Dead) => {}       // a leftover event of sockets closed in this batch
        }
    }

    fn on_timer(&mut self, key: usize, due: Tick) {
        let now = self.now;
        let tick = self.tick;
        match self.conns.get_mut(key) {
            Some(Conn::Handshake(h)) if h.armed == due => {
                h.armed = 0;
                let a = h.hs.handle_timeout(&h.settings, now);
                self.apply(key, a);
            }
            Some(Conn::Tunnel(t)) if t.armed == due => {
                t.armed = 0;
                match t.times.check(t.timeouts, tick) {
                    Check::Expired(reason) => self.close_tunnel(key, reason),
                    Check::Rearm(at) => {
                        t.armed = at;
                        self.wheel.insert(key as u32, at);
                    }
                    Check::Never => {}
                }
            }
            Some(Conn::Closing(c)) if c.until == due => {
                self.remove_conn(key);
            }
            _ => {} // stale entry: the connection moved on or the key was reused
        }
    }

    // ---- handshake ----------------------------------------------------------------------------

    fn arm_handshake(&mut self, key: usize) {
        if let Some(Conn::Handshake(h)) = self.conns.get_mut(key) {
            let due = self.clock.tick_ceil(h.hs.deadline());
            if h.armed == 0 || !at_or_before(h.armed, due) {
                h.armed = due;
                self.wheel.insert(key as u32, due);
            }
        }
    }

    fn hs_client_readable(&mut self, key: usize) {
        loop {
            let Some(Conn::Handshake(h)) = self.conns.get_mut(key) else {
                return;
            };
            let limit = h.hs.client_read_limit(&h.settings).min(SCRATCH);
            if limit == 0 {
                return;
            }
            let mut action = match (&h.client).read(&mut self.scratch[..limit]) {
                Ok(0) => h.hs.handle_client_eof(),
                Ok(n) => {
                    h.hs.handle_client_data(&h.settings, self.now, &self.scratch[..n])
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => Action::Close,
            };
            if h.peer.deferred && !h.hs.awaits_proxy_header() && action != Action::Close {
                action = count_proxied_client(h, &self.limiter, action);
            }
            if action != Action::Wait {
                self.apply(key, action);
                return;
            }
        }
    }

    fn hs_backend_event(&mut self, key: usize) {
        let Some(Conn::Handshake(h)) = self.conns.get_mut(key) else {
            return;
        };
        let Some(b) = h.backend.as_ref() else { return };
        let s = &h.settings;
        // Connect completion: an error, or a peer address once connected.
        if let Ok(Some(_)) | Err(_) = b.take_error() {
            let a =
                h.hs.handle_connect_failed(s, self.now, ConnectFailure::Refused);
            return self.apply(key, a);
        }
        if h.hs.is_connecting() {
            match b.peer_addr() {
                Ok(_) => {
                    let a = h.hs.handle_connected(s, self.now);
                    return self.apply(key, a);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    let a =
                        h.hs.handle_connect_failed(s, self.now, ConnectFailure::Reset);
                    return self.apply(key, a);
                }
            }
        }
        self.hs_send(key);
        self.hs_backend_readable(key);
    }

    fn hs_send(&mut self, key: usize) {
        loop {
            let Some(Conn::Handshake(h)) = self.conns.get_mut(key) else {
                return;
            };
            let out = h.hs.backend_output();
            let Some(b) = h.backend.as_ref() else { return };
            if !h.hs.is_sending() {
                return;
            }
            let a = match (&*b).write(out) {
                Ok(n) => h.hs.handle_backend_written(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    h.hs.handle_connect_failed(&h.settings, self.now, ConnectFailure::Reset)
                }
            };
            match a {
                Action::SendHead => continue,
                Action::Wait => {
                    self.arm_handshake(key);
                    return;
                }
                other => return self.apply(key, other),
            }
        }
    }

    fn hs_backend_readable(&mut self, key: usize) {
        loop {
            let Some(Conn::Handshake(h)) = self.conns.get_mut(key) else {
                return;
            };
            let s = &h.settings;
            let limit = h.hs.backend_read_limit(s).min(SCRATCH);
            let Some(b) = h.backend.as_ref() else { return };
            if limit == 0 {
                return;
            }
            let a = match (&*b).read(&mut self.scratch[..limit]) {
                Ok(0) => h.hs.handle_backend_eof(),
                Ok(n) => h.hs.handle_backend_data(s, &self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    h.hs.handle_connect_failed(s, self.now, ConnectFailure::Reset)
                }
            };
            if a != Action::Wait {
                return self.apply(key, a);
            }
        }
    }

    /// Carries out what the session decided; loops while one decision leads to another.
    fn apply(&mut self, key: usize, mut action: Action) {
        loop {
            let Some(Conn::Handshake(h)) = self.conns.get_mut(key) else {
                return;
            };
            match action {
                Action::Wait => {
                    self.arm_handshake(key);
                    return;
                }
                Action::SendHead => {
                    self.arm_handshake(key);
                    return self.hs_send(key);
                }
                Action::Connect(addr) => {
                    h.backend = None;
                    // A new attempt while one was open: the previous backend failed.
                    if let Some(prev) = h.attempt.take() {
                        self.backend_counts(prev).failures += 1;
                    }
                    match self.connect(key, addr) {
                        Ok(()) => {
                            if let Some(Conn::Handshake(h)) = self.conns.get_mut(key) {
                                h.attempt = Some(addr);
                            }
                            self.arm_handshake(key);
                            return;
                        }
                        Err(why) => {
                            self.backend_counts(addr).failures += 1;
                            let Some(Conn::Handshake(h)) = self.conns.get_mut(key) else {
                                return;
                            };
                            action = h.hs.handle_connect_failed(&h.settings, self.now, why);
                        }
                    }
                }
                Action::Reject(r) => {
                    if matches!(r, Reject::BackendFailed(_) | Reject::BackendTimeout) {
                        if let Some(prev) = h.attempt.take() {
                            self.backend_counts(prev).failures += 1;
                        }
                    }
                    self.counters.count_reject(r);
                    return self.start_closing(key, r.response().to_vec(), r.status(), "rejected");
                }
                Action::Forward => {
                    self.counters.forwarded += 1;
                    let out = h.hs.client_output().to_vec();
                    let status = h.hs.answer_status().unwrap_or(0);
                    return self.start_closing(key, out, status, "answered");
                }
                Action::Close => return self.remove_conn(key),
                Action::Tunnel => return self.start_tunnel(key),
            }
        }
    }

    fn connect(&mut self, key: usize, addr: SocketAddr) -> Result<(), ConnectFailure> {
        let mut s = TcpStream::connect(addr).map_err(|e| {
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
        self.poll
            .registry()
            .register(
                &mut s,
                token(key, true),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|_| ConnectFailure::Reset)?;
        if let Some(Conn::Handshake(h)) = self.conns.get_mut(key) {
            h.backend = Some(s);
        }
        Ok(())
    }

    /// Takes the handshake out of its slab entry to turn it into something else in the same
    /// entry: the key, and so the sockets' registered tokens, stay the same.
    fn lift_handshake(&mut self, key: usize) -> Option<Box<HsConn>> {
        let slot = self.conns.get_mut(key)?;
        if !matches!(slot, Conn::Handshake(_)) {
            return None;
        }
        match std::mem::replace(slot, Conn::Dead) {
            Conn::Handshake(h) => Some(h),
            _ => None, // checked above
        }
    }

    fn start_closing(&mut self, key: usize, out: Vec<u8>, status: u16, reason: &'static str) {
        let Some(h) = self.lift_handshake(key) else {
            return;
        };
        let log = self.log.is_some().then(|| ConnLog {
            client: h.hs.client(),
            settings: h.settings.clone(),
            route: h.hs.route(),
            backend: h.hs.backend(),
            status,
            started: h.hs.started(),
            up: 0,
            down: 0,
        });
        let HsConn {
            client,
            backend,
            peer,
            ..
        } = *h;
        drop(backend);
        let until = self.tick.wrapping_add(Clock::ticks(LINGER));
        self.conns[key] = Conn::Closing(Box::new(Closing {
            client,
            peer,
            log,
            reason,
            out,
            pos: 0,
            shut: false,
            until,
        }));
        self.wheel.insert(key as u32, until);
        self.progress_closing(key);
    }

    fn progress_closing(&mut self, key: usize) {
        let Some(Conn::Closing(c)) = self.conns.get_mut(key) else {
            return;
        };
        while c.pos < c.out.len() {
            match (&c.client).write(&c.out[c.pos..]) {
                Ok(n) => c.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove_conn(key),
            }
        }
        if !c.shut {
            c.shut = true;
            let _ = crate::sys::sock::shutdown_write(&c.client);
        }
        // Discard what the client still sends until it closes or the linger time ends.
        loop {
            match (&c.client).read(&mut self.scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.remove_conn(key);
    }

    // ---- tunnel ----------------------------------------------------------------------------

    fn start_tunnel(&mut self, key: usize) {
        // The session asks for a tunnel only after the backend answered on its socket.
        if !matches!(self.conns.get(key), Some(Conn::Handshake(h)) if h.backend.is_some()) {
            return self.remove_conn(key);
        }
        let Some(h) = self.lift_handshake(key) else {
            return;
        };
        let HsConn {
            client,
            backend: Some(backend),
            hs,
            settings,
            peer,
            attempt,
            ..
        } = *h
        else {
            return; // checked above
        };
        self.counters
            .observe_handshake(self.now.saturating_duration_since(hs.started()));
        let backend_id = attempt.map_or(u16::MAX, |a| {
            let id = self.backend_id(a);
            self.backends_dirty = true;
            let c = &mut self.backend_stats[id as usize].1;
            c.active += 1;
            c.tunnels += 1;
            id
        });
        let t = &settings.timeouts;
        let timeouts = tunnel::Timeouts::new(t.idle, t.half_close);
        self.counters.tunnels += 1;
        let log = self.log.is_some().then(|| {
            Box::new(ConnLog {
                client: hs.client(),
                settings: settings.clone(),
                route: hs.route(),
                backend: hs.backend(),
                status: 101,
                started: hs.started(),
                up: 0,
                down: 0,
            })
        });
        let (to_client, to_backend) = hs.into_tunnel_bytes();
        let t = Tunnel {
            client,
            backend,
            up: Dir::with_initial(to_backend, &mut self.relay_stats),
            down: Dir::with_initial(to_client, &mut self.relay_stats),
            times: Times::new(self.tick),
            armed: 0,
            timeouts,
            counted_ip: peer.counted,
            backend_id,
            log,
        };
        self.conns[key] = Conn::Tunnel(t);
        self.pump_tunnel(key);
    }

    fn pump_tunnel(&mut self, key: usize) {
        let tick = self.tick;
        let (mut cx, conns) = self.ctx();
        let Some(Conn::Tunnel(t)) = conns.get_mut(key) else {
            return;
        };
        match t.pump(&mut cx, tick) {
            Outcome::Open { more } => {
                if more {
                    self.deferred.push(key);
                }
                let Some(Conn::Tunnel(t)) = self.conns.get_mut(key) else {
                    return;
                };
                if let Some(due) = t.times.deadline(t.timeouts) {
                    if t.armed == 0 || !at_or_before(t.armed, due) {
                        t.armed = due;
                        self.wheel.insert(key as u32, due);
                    }
                }
            }
            Outcome::Closed(reason) => self.close_tunnel(key, reason),
        }
    }

    fn close_tunnel(&mut self, key: usize, reason: CloseReason) {
        if !matches!(self.conns.get(key), Some(Conn::Tunnel(_))) {
            return;
        }
        // Checked above: this is the tunnel.
        let Some(Conn::Tunnel(mut t)) = self.take_conn(key) else {
            return;
        };
        let (mut cx, _) = self.ctx();
        t.release(&mut cx);
        if let Some(ip) = t.counted_ip {
            self.limiter.release(ip);
        }
        if let Some((_, c)) = self.backend_stats.get_mut(t.backend_id as usize) {
            c.active -= 1;
            self.backends_dirty = true;
        }
        self.total.release();
        if let (Some(sink), Some(log)) = (&self.log, &t.log) {
            log.write(sink, &mut self.log_batch, self.now, reason.as_str());
        }
        self.counters.count_close(reason);
        drop(t);
        self.fds_freed();
    }

    fn fds_freed(&mut self) {
        if self.accept_paused_until.is_some() {
            self.accept_paused_until = None;
            self.accept_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slab entry of an idle tunnel is the whole per-connection cost in user space: keep it
    /// small. (bench-results/ explains each field.)
    #[test]
    fn idle_tunnel_slab_entry_is_small() {
        let tunnel = std::mem::size_of::<Tunnel>();
        let conn = std::mem::size_of::<Conn>();
        eprintln!(
            "Tunnel {tunnel} B, Conn {conn} B, Dir {} B",
            std::mem::size_of::<Dir>()
        );
        assert!(conn <= 128, "slab entry grew to {conn} bytes");
    }
}
