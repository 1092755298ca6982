//! One connection's whole life, accept to close, as one state machine the driver feeds.
//!
//! ```text
//!   accept ─▶ Upgrade ─(101)─▶ Relay ──(FIN both ways, reset, timeout, drain)──▶ End
//!     │        │  ▲  │ refused, non-101 answer
//!     │        │  │  ▼
//!     │ full   │  │ Linger: write the answer, FIN, discard until the client closes ──▶ End
//!     └────────┼──┼──▲
//!   plain request  │  │ our answer (502/504/...), or the answer said Connection: close
//!              ▼  │  │
//!              Http ─┘ answer out, keep-alive: the Upgrade stage reads the next head
//! ```
//!
//! The driver tells a connection what happened ([`Conn::handle`]: readiness, a timer, a
//! drain) and then asks what to do until the answer is to wait ([`Conn::poll`]). Every answer
//! is an operation ([`Step`]): I/O on one of the connection's sockets, a backend connect, a
//! per-IP admission, a timer to arm, a fact for the counters, or the end. The driver carries
//! each out and reports its result (`complete_*`); it never asks which stage a connection is
//! in. Upgrade and Linger are boxed: an idle relay's slab entry holds only [`Relay`] state.

mod handover;
mod http;
mod linger;
mod pump;
mod ready;
mod upgrade;

#[cfg(test)]
mod tests;

use crate::core::balance::Lease;
use crate::core::handshake::{ConnectFailure, Settings};
use crate::core::relay::{Check, CloseReason, Ctx, IoOp, Next, Pipes, Relay, Side, Timeouts, Way};
use crate::core::status::Reject;
use crate::core::timer::{at_or_before, Clock, Tick};
pub use handover::{Handed, LogFacts, Released};
use http::Exchange;
use linger::Linger;
pub use pump::Executor;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use upgrade::Upgrading;

/// How long a refused client gets to read its answer before we close (nginx's lingering close).
pub const LINGER: Duration = Duration::from_secs(2);

/// The worker's time, read once per loop iteration.
#[derive(Debug, Clone, Copy)]
pub struct Time {
    pub now: Instant,
    pub tick: Tick,
    pub clock: Clock,
}

/// What the worker knows of a connection it just accepted.
#[derive(Debug, Clone, Copy)]
pub struct Accept {
    pub peer: SocketAddr,
    /// The address the client connected to (sent on in PROXY headers).
    pub local: SocketAddr,
    /// The listener requires a PROXY protocol header first.
    pub expect_proxy: bool,
    /// The process is at `max_connections`: answer 503 (this connection holds no slot).
    pub full: bool,
    /// Keep the facts an access log line needs.
    pub log: bool,
    /// Both sockets may splice (plain TCP, not TLS).
    pub splice_ok: bool,
    /// The client came through a TLS listener: the backend hears `X-Forwarded-Proto: https`.
    pub tls: bool,
    /// The client came to a redirect listener: every request is answered with a redirect to
    /// https on this port.
    pub redirect: Option<u16>,
}

/// The error a TLS transport's read returns when the client sent plain HTTP to a TLS listener.
/// The upgrade answers it with a readable 400 ([`BadRequest::PlainHttpOnTls`]), which the
/// transport passes through unencrypted.
///
/// [`BadRequest::PlainHttpOnTls`]: crate::core::status::BadRequest::PlainHttpOnTls
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainHttpOnTls;

impl std::fmt::Display for PlainHttpOnTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("plain HTTP on a TLS listener")
    }
}

impl std::error::Error for PlainHttpOnTls {}

impl PlainHttpOnTls {
    /// True when `e` is this error.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref()
            .is_some_and(|inner| inner.is::<PlainHttpOnTls>())
    }
}

/// The error a TLS backend's transport returns when the handshake with the backend failed
/// (a certificate it does not trust, a name mismatch, a reset): nothing of the request went
/// out, so the next backend is tried, as after a refused connect; with none left, 502.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsFailed(pub String);

impl std::fmt::Display for BackendTlsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake with the backend failed: {}", self.0)
    }
}

impl std::error::Error for BackendTlsFailed {}

impl BackendTlsFailed {
    /// True when `e` is this error.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref()
            .is_some_and(|inner| inner.is::<BackendTlsFailed>())
    }
}

/// How the per-IP limiter took a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Counted,
    /// No per-IP limit is configured.
    Unlimited,
    Refused,
}

/// How a backend connect went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connecting {
    /// Started and in progress: a readiness event on the backend socket follows.
    Started,
    /// Not finished yet (a spurious event).
    Pending,
    Connected,
    /// An idle pooled connection was handed over ([`Step::Checkout`]): connected, and
    /// perhaps closed by the backend since (a request on it may be retried).
    Reused,
    Failed(ConnectFailure),
}

/// A fact for the worker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// An attempt to this backend failed (refused, reset, timed out, broken answer).
    /// Carries the route's [`crate::core::route::RouteEntry::id`]: a backend is counted per
    /// route that uses it.
    BackendFailed(SocketAddr, u32),
    /// The client is refused with this answer.
    Rejected(Reject),
    /// The process was at `max_connections` when this client came.
    Full,
    /// The connection gives its `max_connections` slot back now (it is refused and only lingers
    /// to deliver the answer); its [`End`] then holds none.
    SlotReleased,
    /// A backend's non-101 answer is relayed to the client.
    Answered,
    /// A redirect listener answered a request with a redirect to https.
    Redirected,
    /// The backend switched protocols: the relay begins. The worker answers with
    /// [`Conn::set_backend_id`].
    RelayOpened {
        backend: Option<SocketAddr>,
        /// The route's [`crate::core::route::RouteEntry::id`] (0: none).
        route: u32,
        handshake: Duration,
    },
    /// A forwarded request ended with this status (ours or the backend's; 0 when the client
    /// left before an answer), on a reused backend connection or not, retried or not.
    Request {
        status: u16,
        reused: bool,
        retried: bool,
        /// The route's [`crate::core::route::RouteEntry::id`].
        route: u32,
    },
}

/// Why a connection ended, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// A relay ended (counted per reason in the metrics).
    Relay(CloseReason),
    /// The client left before its upgrade finished.
    ClientLeft,
    /// The proxy stopped (drain time over) before the upgrade finished.
    Drained,
    /// The client got a refusal and the linger is over.
    Rejected,
    /// The client got a backend's non-101 answer and the linger is over.
    Answered,
    /// A forwarded request's answer broke off (the backend closed or timed out mid-answer).
    Aborted,
}

impl EndReason {
    /// The word in access log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Relay(r) => r.as_str(),
            EndReason::ClientLeft => "client_closed",
            EndReason::Drained => "drain",
            EndReason::Rejected => "rejected",
            EndReason::Answered => "answered",
            EndReason::Aborted => "aborted",
        }
    }
}

/// A connection is over: what the worker must give back and log.
#[derive(Debug)]
pub struct End {
    pub reason: EndReason,
    /// Release this IP in the per-IP limiter.
    pub counted_ip: Option<IpAddr>,
    /// The connection holds a `max_connections` slot.
    pub holds_slot: bool,
    /// The worker's id of the relay's backend (per-backend active count), or `u16::MAX`.
    pub backend_id: u16,
    pub log: Option<Box<ConnLog>>,
}

/// The next thing to do for a connection.
#[must_use]
#[derive(Debug)]
pub enum Step {
    /// Execute on a socket, then [`Conn::complete_io`].
    Io(IoOp),
    /// Close the backend socket if any, start a non-blocking connect, [`Conn::complete_connect`].
    Connect(SocketAddr),
    /// Ask the backend socket whether its connect finished, [`Conn::complete_connect`].
    CheckConnect,
    /// The backend socket just connected to this backend of the route with this
    /// [`crate::core::route::RouteEntry::id`] speaks TLS: wrap it in a client session under
    /// the route's TLS settings before any byte goes out. The handshake runs inside the first
    /// write; a failure shows as that write's error (answered 502). A worker that cannot
    /// start the session closes the backend socket, so nothing goes out in plaintext.
    StartTls {
        route: u32,
        backend: SocketAddr,
    },
    /// Close the backend socket: the client gets an answer of ours.
    CloseBackend,
    /// Like [`Step::Connect`], but an idle pooled connection to this backend may serve
    /// instead ([`Connecting::Reused`]).
    Checkout(SocketAddr),
    /// The backend socket (connected to this address) is idle and clean: keep it in the
    /// worker's pool for another request.
    Release(SocketAddr),
    /// Write an access log line for a forwarded request, with this reason.
    Log(Box<ConnLog>, &'static str),
    /// Count this client against `max_connections_per_ip`, [`Conn::complete_admit`].
    Admit(IpAddr),
    /// Call [`Conn::handle`] with [`Event::Timer`] at this tick.
    Arm(Tick),
    Note(Note),
    /// The round's budget ran out: [`Event::Resume`] after other connections had their turn.
    Yield,
    /// Nothing until an event.
    Wait,
    /// Close both sockets and give back what [`End`] says.
    End(End),
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Readiness on one socket: `hup` when the peer sent FIN or an error came, `gone` when it
    /// reset or closed both ways.
    Ready {
        side: Side,
        readable: bool,
        writable: bool,
        hup: bool,
        gone: bool,
    },
    /// An armed timer fired (stale ones are ignored).
    Timer(Tick),
    /// Continue after a [`Step::Yield`].
    Resume,
    /// The proxy stops (a drain began): finish what is under way, start nothing new. Idle
    /// keep-alive connections close now; a forwarded request's answer says
    /// `Connection: close`; tunnels run on until [`Event::Drain`].
    Draining,
    /// The drain time is over: end now.
    Drain,
}

/// What the access log line of a connection says, gathered while it lives.
#[derive(Debug)]
pub struct ConnLog {
    pub client: SocketAddr,
    pub settings: Arc<Settings>,
    pub route: Option<usize>,
    pub backend: Option<SocketAddr>,
    pub status: u16,
    pub started: Instant,
    pub up: u64,
    pub down: u64,
}

impl ConnLog {
    /// The route prefix for the log line, or "-".
    pub fn route_prefix(&self) -> &str {
        self.route
            .filter(|&r| r < self.settings.routes.len())
            .map_or("-", |r| self.settings.routes.get(r).prefix.as_str())
    }
}

/// The operations a stage has in flight, one per socket and direction at most. An epoll
/// driver completes each at once; a completion driver (io_uring) reports it later, so a stage
/// must not ask for a second read of a socket whose first is still waiting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lanes(u8);

impl Lanes {
    fn bit(side: Side, reads: bool) -> u8 {
        1 << ((side == Side::Backend) as u8 * 2 + reads as u8)
    }

    /// `op` was handed to the driver.
    pub(crate) fn start(&mut self, op: IoOp) {
        self.0 |= Lanes::bit(op.side(), op.reads());
    }

    /// `op` completed.
    pub(crate) fn end(&mut self, op: IoOp) {
        self.0 &= !Lanes::bit(op.side(), op.reads());
    }

    /// A read (or else a write) of `side` is in flight.
    pub(crate) fn busy(self, side: Side, reads: bool) -> bool {
        self.0 & Lanes::bit(side, reads) != 0
    }

    pub(crate) fn any(self) -> bool {
        self.0 != 0
    }

    /// What is in flight on `side` is abandoned (its socket is closed).
    pub(crate) fn drop_side(&mut self, side: Side) {
        self.0 &= !(Lanes::bit(side, true) | Lanes::bit(side, false));
    }
}

/// An established relay with what the worker must know when it ends.
#[derive(Debug)]
pub struct Relaying<P> {
    relay: Relay<P>,
    /// The due tick of this relay's live wheel entry (0: none).
    armed: Tick,
    backend_id: u16,
    counted_ip: Option<IpAddr>,
    /// Set by a completion that ended the relay; returned by the next poll.
    closed: Option<CloseReason>,
    /// What only some relays have, in one box so that the idle relay's entry stays small
    /// (bench-results/slab-entry.md); allocated only when an access log is configured or the
    /// route balances by `least_conn`.
    rare: Option<Box<Rare>>,
}

/// The parts of a relay that most relays do not have.
#[derive(Debug)]
struct Rare {
    /// Access log facts (an access log is configured).
    log: Option<Box<ConnLog>>,
    /// The tunnel's count for a `least_conn` route, given back when the relay is dropped.
    _lease: Option<Lease>,
}

impl Rare {
    /// `None` when there is neither: no allocation.
    fn new(log: Option<Box<ConnLog>>, lease: Option<Lease>) -> Option<Box<Rare>> {
        if log.is_none() && lease.is_none() {
            return None;
        }
        Some(Box::new(Rare { log, _lease: lease }))
    }
}

impl<P> Relaying<P> {
    fn handle(&mut self, ev: Event, t: &Time) {
        match ev {
            Event::Ready {
                side,
                readable,
                writable,
                hup,
                gone: _,
            } => self
                .relay
                .handle_ready(side, readable || hup, writable, hup),
            Event::Resume => self.relay.resume(),
            Event::Timer(due) if due == self.armed => {
                self.armed = 0;
                match self.relay.times.check(self.relay.timeouts, t.tick) {
                    Check::Expired(reason) => self.closed = Some(reason),
                    Check::Rearm(_) | Check::Never => {} // the next poll arms again
                }
            }
            Event::Timer(_) => {} // stale: the relay re-armed since
            Event::Drain => self.closed = Some(CloseReason::Drain),
            // A tunnel runs until it ends or the drain time is over.
            Event::Draining => {}
        }
    }

    #[inline]
    fn poll(&mut self, cx: &mut Ctx<'_, impl Pipes<Pipe = P>>, t: &Time) -> Step {
        if let Some(reason) = self.closed {
            return self.end(reason, cx);
        }
        let room = cx.scratch.len();
        match self.relay.poll_op(cx, t.tick, room) {
            Next::Op(op) => Step::Io(op),
            next => self.waiting(next, cx),
        }
    }

    /// What a relay that asks for no operation (`next`) wants of the worker.
    fn waiting(&mut self, next: Next, cx: &mut Ctx<'_, impl Pipes<Pipe = P>>) -> Step {
        let waiting = match next {
            Next::Closed(reason) => return self.end(reason, cx),
            Next::Op(op) => return Step::Io(op),
            Next::Wait => Step::Wait,
            Next::Yield => Step::Yield,
        };
        // Arm lazily: only when the deadline moved earlier than the armed entry (a firing entry
        // re-checks and re-arms), so bytes moving do not touch the wheel.
        if let Some(due) = self.relay.deadline() {
            if self.armed == 0 || !at_or_before(self.armed, due) {
                self.armed = due;
                return Step::Arm(due);
            }
        }
        waiting
    }

    /// The result of an operation; `scratch`: the buffer it read into or wrote from.
    #[inline(always)]
    fn complete(
        &mut self,
        op: IoOp,
        res: io::Result<usize>,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        scratch: &[u8],
        t: &Time,
    ) {
        match self.relay.complete(op, res, cx, scratch, t.tick) {
            Ok((way, n)) => {
                if let Some(l) = self.rare.as_mut().and_then(|r| r.log.as_mut()) {
                    match way {
                        Way::Up => l.up += n,
                        Way::Down => l.down += n,
                    }
                }
            }
            Err(reason) => self.closed = Some(reason),
        }
    }

    fn end(&mut self, reason: CloseReason, cx: &mut Ctx<'_, impl Pipes<Pipe = P>>) -> Step {
        self.relay.release(cx);
        Step::End(End {
            reason: EndReason::Relay(reason),
            counted_ip: self.counted_ip.take(),
            holds_slot: true,
            backend_id: self.backend_id,
            log: self.rare.take().and_then(|r| r.log),
        })
    }
}

/// One connection's state, generic over the worker's pipe type.
#[derive(Debug)]
pub enum Conn<P> {
    Upgrade(Box<Upgrading>),
    Http(Box<Exchange>),
    Relay(Relaying<P>),
    Linger(Box<Linger>),
    /// Over: [`Step::End`] was returned.
    Ended,
}

impl<P> Conn<P> {
    /// A connection the worker just accepted at `t`, under `settings` (kept for its whole
    /// upgrade: a reload never changes the rules in the middle of a handshake).
    pub fn accept(a: Accept, t: &Time, settings: Arc<Settings>) -> Conn<P> {
        if a.full {
            return Conn::Linger(Box::new(Linger::refuse_at_accept(
                Reject::Overloaded,
                &[Note::Full, Note::Rejected(Reject::Overloaded)],
                false,
                t,
            )));
        }
        Conn::Upgrade(Box::new(Upgrading::new(a, t, settings)))
    }

    /// The due tick of this connection's live timer, to tell stale wheel entries.
    pub fn armed(&self) -> Option<Tick> {
        match self {
            Conn::Upgrade(u) => Some(u.armed),
            Conn::Http(x) => Some(x.armed),
            Conn::Relay(r) => Some(r.armed),
            Conn::Linger(l) => Some(l.armed),
            Conn::Ended => None,
        }
    }

    /// Something happened; then call [`Conn::poll`] until it says to wait.
    #[inline]
    pub fn handle(&mut self, ev: Event, t: &Time) {
        match self {
            Conn::Upgrade(u) => u.handle(ev, t),
            Conn::Http(x) => x.handle(ev, t),
            Conn::Relay(r) => r.handle(ev, t),
            Conn::Linger(l) => l.handle(ev),
            Conn::Ended => {}
        }
    }

    /// The next operation.
    #[inline]
    pub fn poll(&mut self, cx: &mut Ctx<'_, impl Pipes<Pipe = P>>, t: &Time) -> Step {
        // The relay is where a connection spends its life and its bytes: its steps take the
        // short way; the stages around it are out of line.
        if let Conn::Relay(r) = self {
            let step = r.poll(cx, t);
            if let Step::End(_) = step {
                *self = Conn::Ended;
            }
            return step;
        }
        self.poll_stage(cx, t)
    }

    #[inline(never)]
    fn poll_stage(&mut self, cx: &mut Ctx<'_, impl Pipes<Pipe = P>>, t: &Time) -> Step {
        let step = match self {
            Conn::Upgrade(u) => match u.poll(cx.scratch.len(), t) {
                upgrade::Polled::Step(s) => s,
                upgrade::Polled::Reject { out, status, note } => {
                    let answered = matches!(note, Note::Answered | Note::Redirected);
                    let log = u.log_facts(status);
                    let mut linger = Linger::after_upgrade(out, answered, u.counted_ip, log, t);
                    // A read of the client head may still wait in a completion driver.
                    linger.lanes = u.lanes;
                    linger.lanes.drop_side(Side::Backend);
                    *self = Conn::Linger(Box::new(linger));
                    return Step::Note(note);
                }
                upgrade::Polled::Relay => return self.open_relay(cx, t),
                upgrade::Polled::Http(p) => {
                    let mut x = Exchange::new(u.http_origin(), *p, t);
                    // A completion driver may still have a client operation in flight.
                    x.lanes = u.lanes;
                    *self = Conn::Http(Box::new(x));
                    return self.poll(cx, t);
                }
            },
            Conn::Http(x) => match x.poll(cx.scratch.len(), t) {
                http::Polled::Step(s) => s,
                http::Polled::Answer { out, status } => {
                    *self = Conn::Linger(Box::new(Linger::after_http(x, out, status, t)));
                    return self.poll(cx, t);
                }
                http::Polled::Close => {
                    *self = Conn::Linger(Box::new(Linger::after_http(x, Vec::new(), 0, t)));
                    return self.poll(cx, t);
                }
                http::Polled::Next(start) => {
                    *self = Conn::Upgrade(Box::new(Upgrading::next_request(x, start, t)));
                    return self.poll(cx, t);
                }
            },
            Conn::Relay(r) => r.poll(cx, t),
            Conn::Linger(l) => l.poll(cx.scratch.len()),
            Conn::Ended => return Step::Wait,
        };
        if let Step::End(_) = step {
            *self = Conn::Ended;
        }
        step
    }

    fn open_relay(&mut self, cx: &mut Ctx<'_, impl Pipes<Pipe = P>>, t: &Time) -> Step {
        let Conn::Upgrade(u) = std::mem::replace(self, Conn::Ended) else {
            return Step::Wait; // only called from the Upgrade arm
        };
        let opened = u.into_relay(t);
        let to = &opened.settings.timeouts;
        let timeouts = Timeouts::new(to.idle, to.half_close);
        let mut relay = Relay::new(
            opened.to_client,
            opened.to_backend,
            opened.splice_ok,
            timeouts,
            t.tick,
            cx.stats,
        );
        if !cx.completion {
            let (client, backend) = opened.nothing_to_read;
            relay.start_drained(client, backend);
        }
        *self = Conn::Relay(Relaying {
            relay,
            armed: 0,
            backend_id: u16::MAX,
            counted_ip: opened.counted_ip,
            closed: None,
            rare: Rare::new(opened.log, opened.lease),
        });
        Step::Note(Note::RelayOpened {
            backend: opened.backend,
            route: opened.route,
            handshake: t.now.saturating_duration_since(opened.started),
        })
    }

    /// The worker's id for the backend of a [`Note::RelayOpened`].
    pub fn set_backend_id(&mut self, id: u16) {
        if let Conn::Relay(r) = self {
            r.backend_id = id;
        }
    }

    /// The result of a [`Step::Io`]. At most one operation per socket and direction is in
    /// flight, so an epoll driver reports each before the next poll and an io_uring driver
    /// whenever its completion comes.
    #[inline]
    pub fn complete_io(
        &mut self,
        op: IoOp,
        res: io::Result<usize>,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        t: &Time,
    ) {
        if let Conn::Relay(r) = self {
            let scratch = cx.scratch;
            return r.complete(op, res, cx, scratch, t);
        }
        self.complete_stage(op, res, cx, t)
    }

    #[inline(never)]
    fn complete_stage(
        &mut self,
        op: IoOp,
        res: io::Result<usize>,
        cx: &mut Ctx<'_, impl Pipes<Pipe = P>>,
        t: &Time,
    ) {
        match self {
            Conn::Upgrade(u) => u.complete_io(op, res, cx.scratch, cx.completion, t),
            Conn::Http(x) => x.complete_io(op, res, cx.scratch, t),
            Conn::Relay(r) => {
                let scratch = cx.scratch;
                r.complete(op, res, cx, scratch, t)
            }
            Conn::Linger(l) => l.complete_io(op, res),
            Conn::Ended => {}
        }
    }

    /// The result of a [`Step::Connect`] or [`Step::CheckConnect`]. `completion`: the driver
    /// completes operations (see [`Ctx::completion`]).
    pub fn complete_connect(&mut self, c: Connecting, completion: bool, t: &Time) {
        match self {
            Conn::Upgrade(u) => u.complete_connect(c, completion, t),
            Conn::Http(x) => x.complete_connect(c, completion, t),
            Conn::Relay(_) | Conn::Linger(_) | Conn::Ended => {}
        }
    }

    /// The result of a [`Step::Admit`].
    pub fn complete_admit(&mut self, a: Admission, t: &Time) {
        if let Conn::Upgrade(u) = self {
            if u.complete_admit(a) {
                let r = Reject::TooManyFromIp;
                // Refused before its head: it lingers only to deliver the 429, so its
                // `max_connections` slot goes back at once (a client retrying at the limit must
                // not find the slot of its own refusal taken).
                let notes = [Note::Rejected(r), Note::SlotReleased];
                let refused = Linger::refuse_at_accept(r, &notes, false, t);
                *self = Conn::Linger(Box::new(refused));
            }
        }
    }

    /// Bytes for the `Write { src: Held }` in flight.
    pub fn out_bytes(&self) -> &[u8] {
        match self {
            Conn::Upgrade(u) => u.out_bytes(),
            Conn::Http(x) => x.out_bytes(),
            Conn::Relay(_) => &[], // see `lent`: a relay's bytes depend on the direction
            Conn::Linger(l) => l.out_bytes(),
            Conn::Ended => &[],
        }
    }

    /// What operation `op` uses: the bytes of a `Write { src: Held }` and the pipe of a
    /// splice.
    pub fn lent(&self, op: IoOp) -> (&[u8], Option<&P>) {
        match self {
            Conn::Relay(r) => r.relay.lent(op),
            _ => (self.out_bytes(), None),
        }
    }
}
