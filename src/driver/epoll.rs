//! The epoll driver: one thread, one mio `Poll` (edge-triggered) around one [`worker::Worker`].
//! Readiness becomes [`Event::Ready`]; each operation a connection asks for is executed at once
//! with a non-blocking syscall and its result handed straight back.

use super::worker::{self, Driver, Exec, IoCall, PlainCall, Watch};
use crate::core::conn::Event;
use crate::core::relay::{IoOp, Side, Src};
use crate::sys::pipe::Pipe;
use crate::transport::Transport;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::Instant;

pub use super::worker::WorkerConfig;

const LISTENER_BASE: usize = usize::MAX - 1024;
const WAKER: Token = Token(LISTENER_BASE - 1);

fn token(w: Watch) -> Token {
    match w {
        Watch::Conn(key, side) => Token(key * 2 + (side == Side::Backend) as usize),
        Watch::Listener(i) => Token(LISTENER_BASE + i),
    }
}

/// Executes a worker's operations on its sockets with mio's registry (borrowed, not duplicated:
/// a worker holds no descriptor it does not need).
struct Epoll<'a> {
    registry: &'a Registry,
}

impl Driver for Epoll<'_> {
    fn watch(&mut self, fd: BorrowedFd<'_>, w: Watch) -> io::Result<()> {
        let interest = match w {
            Watch::Conn(..) => Interest::READABLE | Interest::WRITABLE,
            Watch::Listener(_) => Interest::READABLE,
        };
        self.registry
            .register(&mut SourceFd(&fd.as_raw_fd()), token(w), interest)
    }

    fn unwatch(&mut self, fd: BorrowedFd<'_>) {
        let _ = self.registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
    }

    fn exec(&mut self, c: IoCall<'_>) -> Exec {
        Exec::Done(Epoll::now(c.op, c.sock, c.held, c.pipe, c.scratch))
    }

    #[inline]
    fn exec_plain(&mut self, c: PlainCall<'_>) -> Exec {
        Exec::Done(Epoll::now(c.op, c.sock, c.held, c.pipe, c.scratch))
    }
}

impl Epoll<'_> {
    /// Executes one operation with a non-blocking syscall (on a plain socket without dynamic
    /// dispatch: [`Driver::exec_plain`]).
    #[inline]
    fn now<T: Transport + ?Sized>(
        op: IoOp,
        sock: Option<&mut T>,
        held: &[u8],
        pipe: Option<&Pipe>,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        let Some(sock) = sock else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let no_pipe = || io::Error::other("splice without a pipe");
        match op {
            IoOp::Read { max, .. } => sock.read(&mut scratch[..max]),
            IoOp::Write {
                src: Src::Scratch(n),
                ..
            } => sock.write(&scratch[..n]),
            IoOp::Write { src: Src::Held, .. } => sock.write(held),
            IoOp::Write {
                src: Src::Buf { .. },
                ..
            } => Err(io::Error::other("no driver buffers")),
            IoOp::SpliceIn { max, .. } => pipe.ok_or_else(no_pipe)?.fill(sock.as_fd(), max),
            IoOp::SpliceOut { len, .. } => pipe.ok_or_else(no_pipe)?.drain(sock.as_fd(), len),
            IoOp::Shutdown { .. } => sock.shutdown_write().map(|()| 0),
            // A readiness driver keeps no receive standing (its Ctx says so).
            IoOp::Recv { .. } | IoOp::StopRecv { .. } => {
                Err(io::Error::other("no standing receives under epoll"))
            }
            IoOp::Queued { .. } => crate::sys::sock::queued(sock.as_fd()),
        }
    }
}

/// A worker driven by epoll, ready to run on its own thread.
pub struct Worker {
    w: worker::Worker,
    poll: Poll,
    waker: Arc<Waker>,
}

impl Worker {
    pub fn new(cfg: WorkerConfig) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Worker {
            w: worker::Worker::new(cfg),
            poll,
            waker,
        })
    }

    /// Wakes this worker's loop from another thread (after sending it a `Control`).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Runs the loop until the worker has drained.
    pub fn run(self) -> io::Result<()> {
        let Worker {
            mut w, mut poll, ..
        } = self;
        w.watch_listeners(&mut Epoll {
            registry: poll.registry(),
        })?;
        w.set_up();
        let mut events = Events::with_capacity(1024);
        loop {
            if w.take_accept_wanted() {
                let mut ep = Epoll {
                    registry: poll.registry(),
                };
                for i in 0..w.listener_count() {
                    w.accept_all(i, &mut ep);
                }
            }
            if let Err(e) = poll.poll(&mut events, w.timeout()) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let mut ep = Epoll {
                registry: poll.registry(),
            };
            w.set_now(Instant::now());
            for ev in events.iter() {
                let t = ev.token().0;
                if ev.token() == WAKER {
                    w.on_control(&mut ep);
                    continue;
                }
                if t >= LISTENER_BASE {
                    w.accept_all(t - LISTENER_BASE, &mut ep);
                    continue;
                }
                let side = if t % 2 == 1 {
                    Side::Backend
                } else {
                    Side::Client
                };
                let hup = ev.is_read_closed() || ev.is_error();
                let ready = Event::Ready {
                    side,
                    readable: ev.is_readable() || hup,
                    writable: ev.is_writable(),
                    hup,
                    // EPOLLHUP/EPOLLERR: the peer is gone (reset or both directions closed), not
                    // merely half-closed.
                    gone: ev.is_error() || ev.is_write_closed(),
                };
                w.ready(t / 2, ready, &mut ep);
            }
            if w.after_events(&mut ep) {
                return Ok(());
            }
        }
    }
}
