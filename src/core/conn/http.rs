//! The HTTP stage: one forwarded request and its answer, streamed both ways.
//!
//! ```text
//!   plain head accepted (upgrade stage) ─▶ Checkout or Connect ─▶ write head ─▶ body up ─┐
//!        ┌─────────────────────────────────────────────────────────────────────────────┘
//!        └▶ answer head (1xx relayed, 101 refused, final rewritten) ─▶ answer body down
//!             ─▶ Release (pool) or CloseBackend ─▶ next request (upgrade stage) or close
//! ```
//!
//! Both directions stream: a request body goes up while the answer may already come down (an
//! early answer closes the connection afterwards). At most one read's worth waits in each
//! direction: a side is read only when what it sent before was written, so a slow reader
//! stops its writer at the kernel's buffers. Bytes the client sent after this request's body
//! are kept for the next request and not read further until the answer is out.
//!
//! Until the final answer head is queued for the client, any failure is answered by us
//! (502, 504, 400, 408, with a readable body); after it, a failure ends both connections (the
//! client sees a short body). A reused backend connection that fails before any answer byte is
//! retried once on a fresh connection when that is safe: nothing of the body was sent, and the
//! method is idempotent or not one byte of the head got through.

mod answer;
mod link;

use super::ready::Readiness;
use super::{BackendTlsFailed, ConnLog, Connecting, EndReason, Event, Lanes, Note, Step, Time};
use crate::config::BackendProtocol;
use crate::config::ProxyVersion;
use crate::core::balance::{Lease, Pick};
use crate::core::handshake::{ConnectFailure, PlainRequest, Settings};
use crate::core::head::find_head_end;
use crate::core::http::{rewrite_response, BodyReader, Extra};
use crate::core::proxy_proto;
use crate::core::relay::{IoOp, Side, Src};
use crate::core::status::{BackendFailure, BadRequest, Reject};
use crate::core::timer::{at_or_before, Tick};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// The backend connection of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Ask the worker for a connection to `backend`.
    Want,
    Connecting,
    Ready,
}

/// Which bytes the `Write { src: Held }` in flight sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Head,
    Up,
    Down,
}

/// How the exchange ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Nothing of a final answer went out: answer with ours.
    Refuse(Reject),
    /// The answer went out whole.
    Done,
    /// Stop both sides now.
    Abort(EndReason),
}

/// What [`Exchange::poll`] decided.
#[derive(Debug)]
pub(super) enum Polled {
    Step(Step),
    /// Linger with our answer (any interim answer not yet written comes first).
    Answer {
        out: Vec<u8>,
        status: u16,
    },
    /// The answer is out and the connection closes: FIN, then linger.
    Close,
    /// The answer is out: read the next request, which starts with these bytes.
    Next(Vec<u8>),
}

/// One forwarded request, accept of its head to the end of its answer.
#[derive(Debug)]
pub struct Exchange {
    pub(super) settings: Arc<Settings>,
    route: usize,
    pub(super) client: SocketAddr,
    pub(super) peer: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) counted_ip: Option<IpAddr>,
    pub(super) log: bool,
    pub(super) splice_ok: bool,
    started: Instant,
    /// The due tick of the live wheel entry (0: none).
    pub(super) armed: Tick,
    deadline: Instant,
    steps: VecDeque<Step>,
    ending: Option<Ending>,
    after: Option<Polled>,

    pick: Pick,
    /// Backends tried so far (the first is `pick.first`, then in list order).
    tried: usize,
    backend: SocketAddr,
    backend_index: usize,
    lease: Option<Lease>,
    link: Link,
    /// The next connection must be a new one (a retry after a reused one failed).
    fresh: bool,
    reused: bool,
    retried: bool,
    last_failure: Option<ConnectFailure>,

    /// The backend's head as accepted (kept for a retry until the answer begins).
    template: Vec<u8>,
    /// What this backend connection gets first: a PROXY header if configured, the head.
    head: Vec<u8>,
    head_pos: usize,
    req: BodyReader,
    /// Body bytes for the backend, already framed.
    up: Vec<u8>,
    up_pos: usize,
    body_sent: u64,
    /// Client bytes after this request: the next one's start.
    next: Vec<u8>,
    head_method: bool,
    idempotent: bool,
    /// The client asked to close after this answer, or closed its side.
    client_close: bool,
    /// An HTTP/1.0 client: it gets no interim answer and no chunked body.
    http10: bool,

    answer_head: Vec<u8>,
    searched: usize,
    /// The final answer's body, once its head is in.
    answer: Option<BodyReader>,
    status: u16,
    response_byte: bool,
    reusable: bool,
    close_client: bool,
    /// Bytes for the client: answer heads and framed body.
    down: Vec<u8>,
    down_pos: usize,
    up_bytes: u64,
    down_bytes: u64,
    writing: Out,

    ready: Readiness,
    /// Operations in flight in a completion driver: at most one per socket and direction (a
    /// body going up while the answer comes down is one write of each socket and one read).
    pub(super) lanes: Lanes,
}

/// Where the exchange comes from: the connection's facts that outlive each request.
pub(super) struct Origin {
    pub settings: Arc<Settings>,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub counted_ip: Option<IpAddr>,
    pub log: bool,
    pub splice_ok: bool,
}

impl Exchange {
    pub(super) fn new(o: Origin, p: PlainRequest, t: &Time) -> Exchange {
        let route = o.settings.routes.get(p.route);
        let first = p.pick.first.min(route.backends.len().saturating_sub(1));
        // Down, ejected and drained backends are skipped; with none left, a 502 at once.
        let start = route.next_to_try(first, 0);
        let (tried, backend_index) = start.unwrap_or((0, first));
        let backend = route.backends[backend_index];
        let lease = Lease::take(&o.settings, p.route, backend_index);
        let mut x = Exchange {
            route: p.route,
            client: o.client,
            peer: o.peer,
            local: o.local,
            counted_ip: o.counted_ip,
            log: o.log,
            splice_ok: o.splice_ok,
            started: t.now,
            armed: 0,
            deadline: t.now + o.settings.timeouts.connect,
            steps: VecDeque::new(),
            ending: None,
            after: None,
            pick: p.pick,
            tried,
            backend,
            backend_index,
            lease,
            link: Link::Want,
            fresh: false,
            reused: false,
            retried: false,
            last_failure: None,
            template: p.head,
            head: Vec::new(),
            head_pos: 0,
            req: BodyReader::new(p.body),
            up: Vec::new(),
            up_pos: 0,
            body_sent: 0,
            next: Vec::new(),
            head_method: p.head_method,
            idempotent: p.idempotent,
            client_close: p.close,
            http10: p.http10,
            answer_head: Vec::new(),
            searched: 0,
            answer: None,
            status: 0,
            response_byte: false,
            reusable: false,
            close_client: false,
            down: Vec::new(),
            down_pos: 0,
            up_bytes: 0,
            down_bytes: 0,
            writing: Out::Down,
            ready: Readiness::new(),
            lanes: Lanes::default(),
            settings: o.settings,
        };
        if start.is_none() {
            x.ending = Some(Ending::Refuse(Reject::BackendFailed(
                BackendFailure::Refused,
            )));
        }
        x.build_head();
        if !p.held.is_empty() {
            x.on_body(&p.held);
        }
        x
    }

    /// The head for a new backend connection: a PROXY header first when the route sends one.
    fn build_head(&mut self) {
        let route = self.settings.routes.get(self.route);
        self.head.clear();
        match route.send_proxy {
            Some(ProxyVersion::V1) => {
                proxy_proto::encode_v1(&mut self.head, self.client, self.local)
            }
            Some(ProxyVersion::V2) => {
                proxy_proto::encode_v2(&mut self.head, self.client, self.local)
            }
            None => {}
        }
        self.head.extend_from_slice(&self.template);
        self.head_pos = 0;
    }

    pub(super) fn handle(&mut self, ev: Event, t: &Time) {
        match ev {
            Event::Ready {
                side: Side::Client,
                readable,
                writable,
                hup,
                gone,
            } => {
                if gone && self.ending.is_none() {
                    // Reset, or closed both ways: no answer can reach it.
                    self.ending = Some(Ending::Abort(EndReason::ClientLeft));
                }
                self.ready.client_readable |= readable || hup;
                self.ready.client_writable |= writable;
            }
            Event::Ready {
                side: Side::Backend,
                ..
            } => self.ready.edge(ev, self.link == Link::Connecting),
            Event::Timer(due) if due == self.armed => {
                self.armed = 0;
                if t.now >= self.deadline && self.ending.is_none() {
                    self.timed_out(t);
                }
            }
            Event::Timer(_) | Event::Resume => {}
            // Finish this request, then close: its answer says so if not sent yet.
            Event::Draining => self.client_close = true,
            Event::Drain => {
                self.ending = Some(Ending::Abort(EndReason::Drained));
            }
        }
    }

    fn timed_out(&mut self, t: &Time) {
        if self.link == Link::Connecting {
            self.last_failure = Some(ConnectFailure::Timeout);
            self.backend_failed();
            self.next_backend(t);
        } else if self.answer.is_some() {
            self.ending = Some(Ending::Abort(EndReason::Aborted));
        } else if !self.req.is_done() && self.up_pos >= self.up.len() && self.head_sent() {
            // The backend has everything we got: the client's body stalled.
            self.ending = Some(Ending::Refuse(Reject::HandshakeTimeout));
        } else {
            self.backend_failed();
            self.ending = Some(Ending::Refuse(Reject::BackendTimeout));
        }
    }

    /// The current backend's connect or answer failed: counted per backend, and for passive
    /// ejection.
    pub(super) fn backend_failed(&mut self) {
        let note = Note::BackendFailed(self.backend, self.route_id());
        self.steps.push_back(Step::Note(note));
        let route = self.settings.routes.get(self.route);
        route.note_backend(self.backend_index, false);
    }

    fn head_sent(&self) -> bool {
        self.link == Link::Ready && self.head_pos >= self.head.len()
    }

    /// Bytes moved: the response timeout starts again.
    fn touch(&mut self, t: &Time) {
        let timeout = self
            .settings
            .routes
            .get(self.route)
            .options
            .response_timeout;
        self.deadline = t.now + timeout;
    }

    pub(super) fn poll(&mut self, scratch: usize, t: &Time) -> Polled {
        loop {
            if let Some(s) = self.steps.pop_front() {
                return Polled::Step(s);
            }
            if let Some(a) = self.after.take() {
                return a;
            }
            if let Some(e) = self.ending.take() {
                self.conclude(e, t);
                continue;
            }
            let answered_whole = self.answer.as_ref().is_some_and(BodyReader::is_done);
            if answered_whole && self.down_pos >= self.down.len() {
                self.ending = Some(Ending::Done);
                continue;
            }
            return Polled::Step(self.next_op(scratch, t));
        }
    }

    fn next_op(&mut self, scratch: usize, t: &Time) -> Step {
        let step = self.pick_op(scratch, t);
        if let Step::Io(op) = step {
            self.lanes.start(op);
        }
        step
    }

    fn pick_op(&mut self, scratch: usize, t: &Time) -> Step {
        if self.link == Link::Want {
            self.link = Link::Connecting;
            self.ready.new_backend();
            // What waited on the old backend socket is abandoned with it.
            self.lanes.drop_side(Side::Backend);
            return if self.poolable() && !self.fresh {
                Step::Checkout(self.backend)
            } else {
                Step::Connect(self.backend)
            };
        }
        let due = t.clock.tick_ceil(self.deadline);
        if self.armed == 0 || !at_or_before(self.armed, due) {
            self.armed = due;
            return Step::Arm(due);
        }
        if self.ready.check_connect {
            self.ready.check_connect = false;
            return Step::CheckConnect;
        }
        let free = |side, reads| !self.lanes.busy(side, reads);
        // The client's side first: what it takes frees the backend's side.
        if self.down_pos < self.down.len()
            && self.ready.client_writable
            && free(Side::Client, false)
        {
            self.writing = Out::Down;
            return write(Side::Client);
        }
        if self.link == Link::Ready {
            let backend_writable = self.ready.backend_writable && free(Side::Backend, false);
            if self.head_pos < self.head.len() {
                if backend_writable {
                    self.writing = Out::Head;
                    return write(Side::Backend);
                }
            } else {
                if self.up_pos < self.up.len() && backend_writable {
                    self.writing = Out::Up;
                    return write(Side::Backend);
                }
                let answering = !self.answer.as_ref().is_some_and(BodyReader::is_done);
                if answering
                    && self.down_pos >= self.down.len()
                    && self.ready.backend_readable
                    && free(Side::Backend, true)
                {
                    return Step::Io(IoOp::Read {
                        side: Side::Backend,
                        max: self.answer_read_limit(scratch),
                    });
                }
                if !self.req.is_done()
                    && self.up_pos >= self.up.len()
                    && self.ready.client_readable
                    && free(Side::Client, true)
                {
                    let max = self
                        .req
                        .read_limit()
                        .map_or(scratch, |n| (n.min(scratch as u64) as usize).max(1));
                    return Step::Io(IoOp::Read {
                        side: Side::Client,
                        max,
                    });
                }
            }
        }
        Step::Wait
    }

    /// How much to read from the backend: the rest of its head's room, or of a known length
    /// (so that bytes beyond it stay in the socket, and the pool's check drops that
    /// connection).
    fn answer_read_limit(&self, scratch: usize) -> usize {
        match &self.answer {
            None => self
                .settings
                .max_head_bytes
                .saturating_sub(self.answer_head.len())
                .clamp(1, scratch),
            Some(a) => a
                .read_limit()
                .map_or(scratch, |n| (n.min(scratch as u64) as usize).max(1)),
        }
    }

    /// The route's metric id.
    fn route_id(&self) -> u32 {
        self.settings.routes.get(self.route).id
    }

    /// Queues the bookkeeping of the end and decides what the connection does next.
    fn conclude(&mut self, e: Ending, t: &Time) {
        let status = match e {
            Ending::Refuse(r) => r.status(),
            Ending::Done | Ending::Abort(_) => self.status,
        };
        self.steps.push_back(Step::Note(Note::Request {
            status,
            reused: self.reused,
            retried: self.retried,
            route: self.route_id(),
        }));
        if self.log {
            self.steps.push_back(Step::Log(
                Box::new(ConnLog {
                    client: self.client,
                    settings: self.settings.clone(),
                    route: Some(self.route),
                    backend: (self.link != Link::Want || self.tried > 0).then_some(self.backend),
                    status,
                    started: self.started,
                    up: self.up_bytes,
                    down: self.down_bytes,
                }),
                match e {
                    Ending::Done => "http",
                    Ending::Refuse(_) => "http_refused",
                    Ending::Abort(r) => r.as_str(),
                },
            ));
        }
        self.lease = None;
        self.after = Some(match e {
            Ending::Refuse(r) => {
                let mut out = self.down.split_off(self.down_pos.min(self.down.len()));
                out.extend_from_slice(&r.page());
                Polled::Answer { out, status }
            }
            Ending::Abort(reason) => Polled::Step(Step::End(super::End {
                reason,
                counted_ip: self.counted_ip,
                holds_slot: true,
                backend_id: u16::MAX,
                log: None,
            })),
            Ending::Done => {
                // A socket with an operation still in flight (a completion driver's) is not
                // pooled: closing it cancels that.
                let reuse = self.reusable
                    && self.req.is_done()
                    && self.link == Link::Ready
                    && self.poolable()
                    && !self.lanes.busy(Side::Backend, true)
                    && !self.lanes.busy(Side::Backend, false);
                self.steps.push_back(if reuse {
                    Step::Release(self.backend)
                } else {
                    Step::CloseBackend
                });
                if self.close_client || self.client_close {
                    Polled::Close
                } else {
                    let _ = t;
                    Polled::Next(std::mem::take(&mut self.next))
                }
            }
        });
    }

    pub(super) fn complete_io(
        &mut self,
        op: IoOp,
        res: io::Result<usize>,
        scratch: &[u8],
        t: &Time,
    ) {
        if !self.lanes.busy(op.side(), op.reads()) {
            return; // abandoned: its backend socket was replaced
        }
        self.lanes.end(op);
        if self.ending.is_some() || self.after.is_some() {
            return;
        }
        let blocked = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
        let retry = |e: &io::Error| e.kind() == io::ErrorKind::Interrupted;
        match (op, res) {
            (
                IoOp::Write {
                    side: Side::Client, ..
                },
                Ok(n),
            ) => {
                sent(&mut self.down, &mut self.down_pos, n);
                self.down_bytes += n as u64;
                self.touch(t);
            }
            (
                IoOp::Write {
                    side: Side::Backend,
                    ..
                },
                Ok(n),
            ) => {
                // The head goes out whole before any body byte (a completion driver may have
                // a write of the client's in flight too, so `writing` may name that one).
                if self.head_pos < self.head.len() {
                    self.head_pos += n;
                } else {
                    sent(&mut self.up, &mut self.up_pos, n);
                    self.body_sent += n as u64;
                }
                self.touch(t);
            }
            (IoOp::Write { .. } | IoOp::Read { .. }, Err(e)) if blocked(&e) => {
                self.ready.blocked(&op)
            }
            (IoOp::Write { .. } | IoOp::Read { .. }, Err(e)) if retry(&e) => {}
            (
                IoOp::Write {
                    side: Side::Client, ..
                }
                | IoOp::Read {
                    side: Side::Client, ..
                },
                Err(_),
            ) => {
                self.ending = Some(Ending::Abort(EndReason::ClientLeft));
            }
            (
                IoOp::Write {
                    side: Side::Backend,
                    ..
                },
                Err(e),
            ) if BackendTlsFailed::is(&e) => {
                // Nothing of the request went out: the next backend may serve.
                self.last_failure = Some(ConnectFailure::Tls);
                self.backend_failed();
                self.next_backend(t);
            }
            (
                IoOp::Write {
                    side: Side::Backend,
                    ..
                },
                Err(_),
            ) => {
                self.backend_broke(BackendFailure::Reset, t);
            }
            (
                IoOp::Read {
                    side: Side::Backend,
                    ..
                },
                Err(_),
            ) => {
                self.backend_broke(BackendFailure::Reset, t);
            }
            (
                IoOp::Read {
                    side: Side::Backend,
                    ..
                },
                Ok(0),
            ) => self.backend_eof(t),
            (
                IoOp::Read {
                    side: Side::Backend,
                    ..
                },
                Ok(n),
            ) => {
                self.touch(t);
                self.on_answer(&scratch[..n.min(scratch.len())]);
            }
            (
                IoOp::Read {
                    side: Side::Client, ..
                },
                Ok(0),
            ) => {
                self.ready.client_readable = false;
                self.client_close = true;
                if !self.req.is_done() {
                    // The body can never end: the backend would wait for it in vain.
                    self.ending = Some(Ending::Abort(EndReason::ClientLeft));
                }
            }
            (
                IoOp::Read {
                    side: Side::Client, ..
                },
                Ok(n),
            ) => {
                self.touch(t);
                self.on_body(&scratch[..n.min(scratch.len())]);
            }
            // The exchange asks for no other operation.
            (
                IoOp::SpliceIn { .. }
                | IoOp::SpliceOut { .. }
                | IoOp::Shutdown { .. }
                | IoOp::Queued { .. }
                | IoOp::Recv { .. }
                | IoOp::StopRecv { .. },
                _,
            ) => {}
        }
    }
    /// Bytes for the `Write { src: Held }` in flight.
    pub(super) fn out_bytes(&self) -> &[u8] {
        match self.writing {
            Out::Head => &self.head[self.head_pos.min(self.head.len())..],
            Out::Up => &self.up[self.up_pos.min(self.up.len())..],
            Out::Down => &self.down[self.down_pos.min(self.down.len())..],
        }
    }
}

fn write(side: Side) -> Step {
    Step::Io(IoOp::Write {
        side,
        src: Src::Held,
    })
}

/// `n` more bytes of `buf` went out, from `*pos` on; a buffer written to its end is freed.
fn sent(buf: &mut Vec<u8>, pos: &mut usize, n: usize) {
    *pos += n;
    if *pos >= buf.len() {
        *buf = Vec::new();
        *pos = 0;
    }
}
