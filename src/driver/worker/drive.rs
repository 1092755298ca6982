//! Carrying out what a connection asks, until it waits.
//!
//! A connection on plain sockets takes the short way: [`Conn::pump`] runs the core's own
//! operation loop and calls [`Plain::exec`] for each operation, which hands it straight to the
//! driver. A connection with a TLS session on either side goes an operation at a time
//! ([`Worker::drive_each`]): the worker wraps the socket in its session for each operation and
//! reports what the session saw (its events, a close_notify read with the last bytes).
//!
//! [`Conn::pump`]: crate::core::conn::Conn::pump

use super::bookkeeping::write_log;
use super::{
    check_connect, ctx, lend, tls, Driver, Exec, IoCall, PlainCall, Slot, Worker, SCRATCH,
};
use crate::core::conn::{Admission, Connecting, Event, Executor, Step};
use crate::core::relay::{IoOp, Side};
use crate::driver::pool;
use crate::sys::pipe::Pipe;
use crate::transport::tls::{TlsBuffers, TlsIo};
use crate::transport::Transport;
use std::io;
use std::net::TcpStream;

/// A connection's plain sockets and the worker's scratch buffer, lent to its `Conn::pump`.
struct Plain<'a, D> {
    d: &'a mut D,
    key: usize,
    client: &'a mut TcpStream,
    backend: Option<&'a mut TcpStream>,
    scratch: &'a mut [u8],
}

impl<D: Driver> Executor<Pipe> for Plain<'_, D> {
    #[inline]
    fn scratch(&self) -> &[u8] {
        self.scratch
    }

    #[inline]
    fn exec(&mut self, op: IoOp, held: &[u8], pipe: Option<&Pipe>) -> Option<io::Result<usize>> {
        let sock = match op.side() {
            Side::Client => Some(&mut *self.client),
            Side::Backend => self.backend.as_deref_mut(),
        };
        let call = PlainCall {
            key: self.key,
            op,
            sock,
            held,
            pipe,
            scratch: self.scratch,
        };
        match self.d.exec_plain(call) {
            Exec::Done(res) => Some(res),
            Exec::Submitted => None,
        }
    }
}

impl Worker {
    /// Carries out what connection `key` asks until it waits.
    pub(super) fn drive(&mut self, key: usize, d: &mut impl Driver) {
        let mode = (d.completes(), d.standing());
        loop {
            if self.has_tls(key) {
                return self.drive_each(key, d);
            }
            let Some(Slot::Live(e)) = self.conns.get_mut(key) else {
                return;
            };
            let mut io = Plain {
                d: &mut *d,
                key,
                client: &mut e.client,
                backend: e.backend.as_mut(),
                scratch: super::scratch(&mut self.scratch),
            };
            let mut cx = ctx(
                &[],
                &mut self.pool,
                &mut self.relay_stats,
                &mut self.returned,
                &self.params,
                mode,
            );
            let step = e.conn.pump(&mut cx, &self.time, &mut io);
            self.give_back(d);
            if let Step::Wait = step {
                return; // the way of most messages: nothing to carry out
            }
            if !self.carry_out(key, step, d) {
                return;
            }
        }
    }

    /// A TLS session wraps a socket of connection `key`.
    #[inline]
    pub(super) fn has_tls(&self, key: usize) -> bool {
        (!self.tls.is_empty() && self.tls.contains_key(&key))
            || (!self.backend_tls.is_empty() && self.backend_tls.contains_key(&key))
    }

    /// [`Worker::drive`] an operation at a time, each through the connection's TLS sessions.
    fn drive_each(&mut self, key: usize, d: &mut impl Driver) {
        loop {
            let Some(Slot::Live(e)) = self.conns.get_mut(key) else {
                return;
            };
            // No standing receive: a TLS session reads through its own socket.
            let mut cx = lend!(self, d, false);
            let step = e.conn.poll(&mut cx, &self.time);
            for id in self.returned.drain(..) {
                d.give_back(id);
            }
            match step {
                Step::Io(op) => {
                    let side = op.side();
                    let mut session = match side {
                        // Plain-only workers skip the lookup.
                        Side::Client if !self.tls.is_empty() => {
                            self.tls.get_mut(&key).map(|s| &mut **s)
                        }
                        _ => None,
                    };
                    let mut backend_session = match side {
                        Side::Backend if !self.backend_tls.is_empty() => {
                            self.backend_tls.get_mut(&key).map(|s| &mut **s)
                        }
                        _ => None,
                    };
                    let mut tls_io;
                    let mut backend_io;
                    let sock: Option<&mut dyn Transport> = match side {
                        Side::Backend => match (backend_session.as_deref_mut(), &e.backend) {
                            (Some(b), Some(sock)) => {
                                let bufs = self
                                    .tls_bufs
                                    .get_or_insert_with(|| Box::new(TlsBuffers::new(SCRATCH)));
                                backend_io = TlsIo {
                                    sock,
                                    session: &mut b.session,
                                    bufs,
                                };
                                Some(&mut backend_io)
                            }
                            _ => e.backend.as_mut().map(|b| b as &mut dyn Transport),
                        },
                        Side::Client => {
                            match session.as_deref_mut() {
                                Some(session) => {
                                    // A TLS client never falls back to plain bytes.
                                    let bufs = self
                                        .tls_bufs
                                        .get_or_insert_with(|| Box::new(TlsBuffers::new(SCRATCH)));
                                    tls_io = TlsIo {
                                        sock: &e.client,
                                        session,
                                        bufs,
                                    };
                                    Some(&mut tls_io)
                                }
                                None => Some(&mut e.client),
                            }
                        }
                    };
                    // Only what the operation uses is looked up.
                    let (held, pipe) = e.conn.lent(op);
                    let done = d.exec(IoCall {
                        key,
                        op,
                        sock,
                        held,
                        pipe,
                        scratch: super::scratch(&mut self.scratch),
                    });
                    let Exec::Done(res) = done else {
                        continue; // the driver reports it with `completed`
                    };
                    let mut eof_pending = false;
                    let read_some = matches!((op, &res), (IoOp::Read { .. }, Ok(n)) if *n > 0);
                    if let Some(s) = session {
                        if let Some(ev) = s.take_event() {
                            self.counters.count_tls(ev);
                        }
                        eof_pending = s.eof_pending() && read_some;
                    }
                    if let Some(b) = backend_session {
                        tls::report(b, &mut self.counters, &res);
                        eof_pending = b.session.eof_pending() && read_some;
                    }
                    let mut cx = lend!(self, d, false);
                    e.conn.complete_io(op, res, &mut cx, &self.time);
                    if eof_pending {
                        // What EPOLLRDHUP would have said, had the end not already been read
                        // out of the socket with the bytes before it.
                        let ev = Event::Ready {
                            side,
                            readable: true,
                            writable: false,
                            hup: true,
                            gone: false,
                        };
                        e.conn.handle(ev, &self.time);
                    }
                    for id in self.returned.drain(..) {
                        d.give_back(id);
                    }
                }
                step => {
                    if !self.carry_out(key, step, d) {
                        return;
                    }
                }
            }
        }
    }

    /// Carries out a step that is not an operation on a socket. Returns false when the
    /// connection waits (or is gone).
    fn carry_out(&mut self, key: usize, step: Step, d: &mut impl Driver) -> bool {
        let completion = d.completes();
        match step {
            Step::Wait => return false,
            Step::Arm(due) => {
                self.wheel.insert(key as u32, due);
                return true;
            }
            _ => self.changed = true,
        }
        let Some(Slot::Live(e)) = self.conns.get_mut(key) else {
            return false;
        };
        match step {
            Step::Checkout(addr) => {
                if let Some(old) = e.backend.take() {
                    d.close(key, Side::Backend, old.into());
                }
                tls::drop_session(&mut self.backend_tls, &mut self.counters, key);
                let pool = &mut self.backend_pool;
                if let Some(s) = pool::checkout_watched(pool, key, addr, self.time.now, d) {
                    e.backend = Some(s);
                    self.counters.pool_reused += 1;
                    e.conn
                        .complete_connect(Connecting::Reused, completion, &self.time);
                    return true;
                }
                self.connect_step(key, addr, d);
            }
            Step::Release(addr) => {
                if let Some(b) = e.backend.take() {
                    // Only plain connections are pooled (a TLS one's session is not kept).
                    let keep = self.draining.is_none() && !self.backend_tls.contains_key(&key);
                    let pool = &mut self.backend_pool;
                    pool::release_watched(pool, (key, addr), b, keep, self.time.now, d);
                }
            }
            Step::Log(log, reason) => {
                if let Some(sink) = &self.log {
                    write_log(sink, &mut self.log_batch, &log, self.time.now, reason);
                }
            }
            Step::Connect(addr) => {
                if let Some(old) = e.backend.take() {
                    d.close(key, Side::Backend, old.into());
                }
                tls::drop_session(&mut self.backend_tls, &mut self.counters, key);
                self.connect_step(key, addr, d);
            }
            Step::CheckConnect => {
                let r = check_connect(e.backend.as_ref());
                e.conn.complete_connect(r, completion, &self.time);
            }
            Step::CloseBackend => {
                if let Some(old) = e.backend.take() {
                    d.close(key, Side::Backend, old.into());
                }
                tls::drop_session(&mut self.backend_tls, &mut self.counters, key);
            }
            Step::StartTls { route, backend } => {
                self.start_backend_tls(key, route, backend, d);
            }
            Step::Admit(ip) => {
                let a = match self.limiter.acquire(ip) {
                    Some(true) => Admission::Counted,
                    Some(false) => Admission::Refused,
                    None => Admission::Unlimited,
                };
                e.conn.complete_admit(a, &self.time);
            }
            Step::Note(n) => self.note(key, n),
            Step::Yield => {
                self.deferred.push(key);
                return false;
            }
            Step::End(end) => {
                self.end(key, end, d);
                return false;
            }
            Step::Io(_) | Step::Wait | Step::Arm(_) => {
                // `Conn::pump` carries its operations out itself; `drive_each` its own.
            }
        }
        true
    }
}
