//! The upgrade stage: from the first client byte to the backend's 101, around the
//! [`Handshake`] machine. Here are the decisions the driver used to take: when to read which
//! socket, when a connect finished, the per-IP limit once a PROXY header named the client.

use super::ready::Readiness;
use super::{
    Accept, Admission, BackendTlsFailed, ConnLog, Connecting, Event, Lanes, Note, PlainHttpOnTls,
    Step, Time,
};
use crate::core::balance::Lease;
use crate::core::handshake::{Action, ConnectFailure, Handshake, PlainRequest, Settings};
use crate::core::relay::{IoOp, Side, Src};
use crate::core::status::{BadRequest, Reject};
use crate::core::timer::at_or_before;
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// When the per-IP limiter must hear of this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// At once: the TCP peer is the client.
    Now,
    /// Behind a trusted balancer: once its PROXY header names the client.
    AfterProxyHeader,
    /// Asked at accept; a refusal is answered without a log line, as a full proxy's 503.
    AskedAtAccept,
    /// The PROXY header named the client: ask now; the action that follows waits.
    Proxied,
    /// Asked after the PROXY header.
    AskedProxied,
    Done,
}

/// A connection whose upgrade is under way.
#[derive(Debug)]
pub struct Upgrading {
    hs: Handshake,
    /// The settings in force when the connection was accepted.
    pub(super) settings: Arc<Settings>,
    /// The due tick of the live wheel entry (0: none).
    pub(super) armed: u32,
    /// An action of the handshake not yet carried out.
    action: Option<Action>,
    notes: VecDeque<Note>,
    admit: Admit,
    pub(super) counted_ip: Option<IpAddr>,
    ready: Readiness,
    /// The drain time ran out.
    drained: bool,
    log: bool,
    splice_ok: bool,
    /// A [`Step::StartTls`] for the backend just connected, not yet asked for.
    start_tls: Option<Step>,
    /// The operation in flight, if any: the upgrade does one thing at a time.
    pub(super) lanes: Lanes,
}

/// What [`Upgrading::poll`] decided.
pub(super) enum Polled {
    Step(Step),
    /// Refuse or answer the client: linger with these bytes.
    Reject {
        out: Vec<u8>,
        status: u16,
        note: Note,
    },
    /// The backend switched protocols.
    Relay,
    /// A plain request to forward.
    Http(Box<PlainRequest>),
}

/// What the relay starts with.
pub(super) struct Opened {
    pub settings: Arc<Settings>,
    pub to_client: Vec<u8>,
    pub to_backend: Vec<u8>,
    pub backend: Option<SocketAddr>,
    /// The route's metric id (0: none).
    pub route: u32,
    pub started: Instant,
    pub counted_ip: Option<IpAddr>,
    pub log: Option<Box<ConnLog>>,
    pub splice_ok: bool,
    /// The tunnel's count against its backend for `least_conn`.
    pub lease: Option<Lease>,
    /// The client's and the backend's sockets are known to be drained (plain sockets under a
    /// readiness driver; see [`Readiness::read_short`]).
    pub nothing_to_read: (bool, bool),
}

impl Upgrading {
    /// The next request on a keep-alive connection whose last answer `x` just went out;
    /// `start` is what the client already sent of it.
    pub(super) fn next_request(x: &super::http::Exchange, start: Vec<u8>, t: &Time) -> Upgrading {
        let s = x.settings.clone();
        let hs = Handshake::next_request(x.client, x.peer, x.local, t.now, &s);
        let mut u = Upgrading {
            hs,
            settings: s,
            armed: 0,
            action: None,
            notes: VecDeque::new(),
            admit: Admit::Done,
            counted_ip: x.counted_ip,
            ready: Readiness::new(),
            drained: false,
            log: x.log,
            // Plain TCP on both sides is decided at accept; a keep-alive connection is the
            // same socket.
            splice_ok: x.splice_ok,
            start_tls: None,
            // The backend is released or closed; a client operation may still be in flight.
            lanes: {
                let mut l = x.lanes;
                l.drop_side(Side::Backend);
                l
            },
        };
        if !start.is_empty() {
            let a = u.hs.handle_client_data(&u.settings, t.now, &start);
            u.act(a);
        }
        u
    }

    /// What an HTTP exchange keeps of this connection.
    pub(super) fn http_origin(&self) -> super::http::Origin {
        super::http::Origin {
            settings: self.settings.clone(),
            client: self.hs.client(),
            peer: self.hs.peer(),
            local: self.hs.local(),
            counted_ip: self.counted_ip,
            log: self.log,
            splice_ok: self.splice_ok,
        }
    }

    pub(super) fn new(a: Accept, t: &Time, settings: Arc<Settings>) -> Upgrading {
        let mut hs = Handshake::accept(a.peer, a.local, a.expect_proxy, t.now, &settings);
        if a.tls {
            hs.set_https();
        }
        if let Some(port) = a.redirect {
            hs.set_redirect(port);
        }
        // Behind a trusted balancer the TCP peer is the balancer: count the client its PROXY
        // header names instead.
        let admit = if a.expect_proxy && settings.proxy_trusts(a.peer.ip()) {
            Admit::AfterProxyHeader
        } else {
            Admit::Now
        };
        Upgrading {
            hs,
            settings,
            armed: 0,
            action: None,
            notes: VecDeque::new(),
            admit,
            counted_ip: None,
            ready: Readiness::new(),
            drained: false,
            log: a.log,
            splice_ok: a.splice_ok,
            start_tls: None,
            lanes: Lanes::default(),
        }
    }

    /// The access log facts so far, with `status`.
    pub(super) fn log_facts(&self, status: u16) -> Option<Box<ConnLog>> {
        self.log.then(|| {
            Box::new(ConnLog {
                client: self.hs.client(),
                settings: self.settings.clone(),
                route: self.hs.route(),
                backend: self.hs.backend(),
                status,
                started: self.hs.started(),
                up: 0,
                down: 0,
            })
        })
    }

    pub(super) fn handle(&mut self, ev: Event, t: &Time) {
        match ev {
            Event::Ready {
                side: Side::Client,
                readable,
                hup,
                gone,
                ..
            } => {
                self.ready.fin_seen(Side::Client, hup || gone);
                if gone && self.hs.client_read_limit(&self.settings) == 0 {
                    // The client reset while we talk to the backend. Edge-triggered: this event
                    // will not come again, so act now instead of waiting for the backend or the
                    // timeout. (A FIN alone is not `gone`: a client may half-close while it
                    // waits for its 101.)
                    let a = self.hs.handle_client_eof();
                    self.act(a);
                } else if readable {
                    self.ready.client_readable = true;
                }
            }
            Event::Ready {
                side: Side::Backend,
                ..
            } => self.ready.edge(ev, self.hs.is_connecting()),
            Event::Timer(due) if due == self.armed => {
                self.armed = 0;
                let a = self.hs.handle_timeout(&self.settings, t.now);
                self.act(a);
            }
            Event::Timer(_) | Event::Resume => {}
            // A keep-alive connection between requests holds nothing: close it now. A head on
            // its way is served (its answer will say `Connection: close`).
            Event::Draining => {
                if self.hs.is_idle() {
                    self.drained = true;
                    self.action = Some(Action::Close);
                }
            }
            // `Polled` turns this into the end.
            Event::Drain => {
                self.drained = true;
                self.action = Some(Action::Close);
            }
        }
    }

    /// Queues the handshake's decision and what it reported.
    fn act(&mut self, a: Action) {
        if let Some(b) = self.hs.take_failed_noted(&self.settings) {
            let route = self.route_id();
            self.notes.push_back(Note::BackendFailed(b, route));
        }
        if a != Action::Wait {
            self.action = Some(a);
        }
    }

    pub(super) fn poll(&mut self, scratch: usize, t: &Time) -> Polled {
        if let Some(n) = self.notes.pop_front() {
            return Polled::Step(Step::Note(n));
        }
        if let Some(s) = self.start_tls.take() {
            return Polled::Step(s);
        }
        match self.admit {
            Admit::Now => {
                self.admit = Admit::AskedAtAccept;
                return Polled::Step(Step::Admit(self.hs.client().ip()));
            }
            Admit::Proxied => {
                self.admit = Admit::AskedProxied;
                return Polled::Step(Step::Admit(self.hs.client().ip()));
            }
            Admit::AskedAtAccept | Admit::AskedProxied => return Polled::Step(Step::Wait),
            Admit::AfterProxyHeader | Admit::Done => {}
        }
        match self.action.take() {
            None | Some(Action::Wait) | Some(Action::SendHead) => {}
            Some(Action::Connect(addr)) => {
                // The old backend socket, and whatever waits on it, is closed.
                self.start_tls = None;
                self.lanes.drop_side(Side::Backend);
                self.ready.new_backend();
                return Polled::Step(Step::Connect(addr));
            }
            Some(Action::Reject(r)) => {
                return Polled::Reject {
                    out: r.response().to_vec(),
                    status: r.status(),
                    note: Note::Rejected(r),
                }
            }
            Some(Action::Answer) => {
                return Polled::Reject {
                    out: self.hs.client_output().to_vec(),
                    status: self.hs.answer_status().unwrap_or(0),
                    note: if self.hs.is_redirect() {
                        Note::Redirected
                    } else {
                        Note::Answered
                    },
                }
            }
            Some(Action::Close) => return Polled::Step(Step::End(self.end())),
            Some(Action::Relay) => return Polled::Relay,
            Some(Action::Http) => match self.hs.take_plain() {
                Some(p) => return Polled::Http(p),
                None => return Polled::Step(Step::End(self.end())),
            },
        }
        let due = t.clock.tick_ceil(self.hs.deadline());
        if self.armed == 0 || !at_or_before(self.armed, due) {
            self.armed = due;
            return Polled::Step(Step::Arm(due));
        }
        if self.ready.check_connect {
            self.ready.check_connect = false;
            return Polled::Step(Step::CheckConnect);
        }
        if self.lanes.any() {
            return Polled::Step(Step::Wait);
        }
        let s = &self.settings;
        let op = if self.hs.is_sending() && self.ready.backend_writable {
            IoOp::Write {
                side: Side::Backend,
                src: Src::Held,
            }
        } else if self.ready.client_readable && self.hs.client_read_limit(s) > 0 {
            IoOp::Read {
                side: Side::Client,
                max: self.hs.client_read_limit(s).min(scratch),
            }
        } else if self.ready.backend_readable && self.hs.backend_read_limit(s) > 0 {
            IoOp::Read {
                side: Side::Backend,
                max: self.hs.backend_read_limit(s).min(scratch),
            }
        } else {
            return Polled::Step(Step::Wait);
        };
        self.lanes.start(op);
        Polled::Step(Step::Io(op))
    }

    fn end(&self) -> super::End {
        super::End {
            reason: if self.drained {
                super::EndReason::Drained
            } else {
                super::EndReason::ClientLeft
            },
            counted_ip: self.counted_ip,
            holds_slot: true,
            backend_id: u16::MAX,
            // A keep-alive connection that sent no next request logged its requests already.
            log: if self.hs.is_idle() {
                None
            } else {
                self.log_facts(0)
            },
        }
    }

    /// The result of `op`. `completion`: the driver completes operations (its reads wait for
    /// bytes) rather than reporting edges.
    pub(super) fn complete_io(
        &mut self,
        op: IoOp,
        res: io::Result<usize>,
        scratch: &[u8],
        completion: bool,
        t: &Time,
    ) {
        if !self.lanes.busy(op.side(), op.reads()) {
            return; // abandoned: its backend socket was replaced
        }
        self.lanes.end(op);
        if let (IoOp::Read { side, max }, Ok(n)) = (op, &res) {
            if *n > 0 && *n < max && self.splice_ok && !completion {
                self.ready.read_short(side);
            }
        }
        let s = &self.settings;
        let retry = |e: &io::Error| e.kind() == io::ErrorKind::Interrupted;
        let blocked = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
        let a = match (op, res) {
            (
                IoOp::Read {
                    side: Side::Client, ..
                },
                res,
            ) => match res {
                Ok(0) => self.hs.handle_client_eof(),
                Ok(n) => {
                    let a = self.hs.handle_client_data(s, t.now, &scratch[..n]);
                    self.admit_proxied_client(a)
                }
                Err(e) if blocked(&e) => {
                    self.ready.blocked(&op);
                    Action::Wait
                }
                Err(e) if retry(&e) => Action::Wait,
                Err(e) if PlainHttpOnTls::is(&e) => self
                    .hs
                    .refuse(Reject::BadRequest(BadRequest::PlainHttpOnTls)),
                Err(_) => Action::Close,
            },
            (IoOp::Read { .. }, res) => match res {
                Ok(0) => self.hs.handle_backend_eof(),
                Ok(n) => self.hs.handle_backend_data(s, &scratch[..n]),
                Err(e) if blocked(&e) => {
                    self.ready.blocked(&op);
                    Action::Wait
                }
                Err(e) if retry(&e) => Action::Wait,
                Err(_) => self
                    .hs
                    .handle_connect_failed(s, t.now, ConnectFailure::Reset),
            },
            (IoOp::Write { .. }, res) => match res {
                Ok(n) => self.hs.handle_backend_written(n),
                Err(e) if blocked(&e) => {
                    self.ready.blocked(&op);
                    Action::Wait
                }
                Err(e) if retry(&e) => Action::Wait,
                Err(e) if BackendTlsFailed::is(&e) => {
                    self.hs.handle_connect_failed(s, t.now, ConnectFailure::Tls)
                }
                Err(_) => self
                    .hs
                    .handle_connect_failed(s, t.now, ConnectFailure::Reset),
            },
            // The upgrade asks for no other operation.
            (
                IoOp::SpliceIn { .. }
                | IoOp::SpliceOut { .. }
                | IoOp::Shutdown { .. }
                | IoOp::Queued { .. }
                | IoOp::Recv { .. }
                | IoOp::StopRecv { .. },
                _,
            ) => Action::Wait,
        };
        self.act(a);
    }

    /// The PROXY header of a trusted balancer's connection has just been read: the client it
    /// names must be counted before `a` is carried out. LOCAL/UNKNOWN headers (health checks)
    /// are not counted.
    fn admit_proxied_client(&mut self, a: Action) -> Action {
        if self.admit != Admit::AfterProxyHeader || self.hs.awaits_proxy_header() {
            return a;
        }
        if a == Action::Close || !self.hs.client_from_proxy_header() {
            self.admit = Admit::Done;
            return a;
        }
        self.admit = Admit::Proxied;
        self.action = Some(a);
        Action::Wait
    }

    pub(super) fn complete_connect(&mut self, c: Connecting, completion: bool, t: &Time) {
        let s = &self.settings;
        let a = match c {
            Connecting::Started | Connecting::Pending => Action::Wait,
            Connecting::Connected | Connecting::Reused => {
                self.ready.backend_connected(completion);
                let route = self.hs.route().map(|r| s.routes.get(r));
                if let (Some(r), Some(backend)) = (route, self.hs.backend()) {
                    if r.options.backend_tls.is_some() && self.hs.is_connecting() {
                        // TLS records cannot splice: the tunnel copies.
                        self.splice_ok = false;
                        self.start_tls = Some(Step::StartTls {
                            route: r.id,
                            backend,
                        });
                    }
                }
                self.hs.handle_connected(s, t.now)
            }
            Connecting::Failed(why) => self.hs.handle_connect_failed(s, t.now, why),
        };
        self.act(a);
    }

    /// The per-IP limiter's answer. True: refused at accept, before any head was read.
    pub(super) fn complete_admit(&mut self, a: Admission) -> bool {
        let at_accept = self.admit == Admit::AskedAtAccept;
        self.admit = Admit::Done;
        match a {
            Admission::Counted => self.counted_ip = Some(self.hs.client().ip()),
            Admission::Unlimited => {}
            Admission::Refused if at_accept => return true,
            Admission::Refused => {
                // Instead of the action that waited: if it was a `Connect`, none was started.
                self.action = None;
                let r = self.hs.refuse(Reject::TooManyFromIp);
                self.act(r);
            }
        }
        false
    }

    /// The metric id of the route the handshake chose (0: none yet).
    fn route_id(&self) -> u32 {
        self.hs
            .route()
            .map_or(0, |r| self.settings.routes.get(r).id)
    }

    /// Bytes for the `Write { src: Held }` in flight: the rewritten head.
    pub(super) fn out_bytes(&self) -> &[u8] {
        self.hs.backend_output()
    }

    pub(super) fn into_relay(self, _t: &Time) -> Opened {
        let log = self.log_facts(101);
        let backend = self.hs.backend();
        let started = self.hs.started();
        let lease = match (self.hs.route(), self.hs.backend_index(&self.settings)) {
            (Some(r), Some(i)) => Lease::take(&self.settings, r, i),
            _ => None,
        };
        let route = self.route_id();
        let (to_client, to_backend) = self.hs.into_tunnel_bytes();
        Opened {
            lease,
            route,
            settings: self.settings,
            to_client,
            to_backend,
            backend,
            started,
            counted_ip: self.counted_ip,
            log,
            nothing_to_read: if self.splice_ok {
                self.ready.drained()
            } else {
                (false, false)
            },
            splice_ok: self.splice_ok,
        }
    }
}
