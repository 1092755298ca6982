//! The io_uring driver: one ring per worker thread around one [`worker::Worker`], the same
//! worker and connection lifecycle as epoll; only the way operations are carried out differs.
//!
//! ```text
//!   listener ── multishot poll ─▶ accept(2) ──▶ Worker::accepted (see `accept` for why)
//!   Read ────── recv, buffer picked from the ─▶ Worker::completed(bytes in that buffer)
//!               worker's ring when bytes come
//!   Write ───── send straight from the buffer ▶ Worker::completed ─▶ buffer given back
//!   connect, close ─ ring operations (close cancels what waits on the socket first)
//!   SpliceIn/Out, Shutdown ─ syscalls from the loop; a splice that would block ─▶ one-shot
//!               poll ─▶ Event::Ready
//!   client socket ─ one-shot poll for errors/hang-up ─▶ Event::Ready (a reset during the upgrade)
//!   TLS stream ─ direct calls through its session, one-shot polls for its edges (`direct`)
//! ```
//!
//! An idle relay has a receive waiting on each socket: kernel memory, but no buffer of ours
//! (the buffer is picked when bytes arrive) and no slab entry beyond the worker's own. Every
//! submission of a loop goes to the kernel in the one `io_uring_enter` that also waits, with the
//! timer wheel's next deadline as its timeout.
//!
//! Splices and shutdowns are not submitted: the kernel executes `IORING_OP_SPLICE` and
//! `IORING_OP_SHUTDOWN` on its io-wq worker threads (a thread hand-off per operation, see
//! bench-results/ for splice), and an io-wq request looks its descriptor number up only when it
//! runs: after a close, that number may already be a new connection's socket. A non-blocking
//! splice(2) or shutdown(2) from the loop acts at once on the socket the connection owns.
//!
//! A binary upgrade hands a relay over once nothing of it is in flight: the worker settles it
//! and the driver cancels what waits in the ring (`settle`).
//!
//! Completions name their operation by a token: connection key, side, kind and the
//! generation of that side's socket. Closing a socket bumps its generation, so a completion of
//! an operation on a closed socket (cancelled, or finished just before) is recognised and
//! dropped, even when the key already serves a new connection.

mod accept;
mod direct;
mod settle;

use super::worker::{self, Driver, Exec, Input, IoCall, Watch};
use crate::config;
use crate::core::conn::{Connecting, Event};
use crate::core::relay::{BufId, IoOp, Side, Src, RECV_LIMIT};
use crate::sys::uring::{BufRing, Completion, Ring, TOKEN_BITS};
use accept::{accept_wanted, accepted};
use nix::sys::eventfd::{EfdFlags, EventFd};
use settle::retry_starved;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

pub use super::stats::UringStats;
pub use super::worker::WorkerConfig;
pub use crate::sys::uring::Setup;

/// Submission queue slots per ring (the completion queue has four times as many).
const ENTRIES: u32 = 1024;
/// The buffer group of the worker's provided buffers.
const GROUP: u16 = 0;
/// `Uring::polls`: a poll for readable / writable is in flight.
const POLLING_IN: u8 = 1;
const POLLING_OUT: u8 = 2;

/// What a token's operation is.
mod kind {
    pub const READ: u8 = 0;
    pub const WRITE_HELD: u8 = 1;
    pub const WRITE_BUF: u8 = 2;
    /// A standing (multishot) receive.
    pub const RECV: u8 = 3;
    pub const CONNECT: u8 = 4;
    pub const POLL_IN: u8 = 5;
    pub const POLL_OUT: u8 = 6;
    /// The client socket's error/hang-up watch.
    pub const GONE: u8 = 7;
    /// A listener's multishot poll; `key` is the listener's index.
    pub const ACCEPT: u8 = 8;
    pub const WAKE: u8 = 9;
}

/// An operation's identity in its completion's user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    key: usize,
    side: Side,
    gen: u8,
    kind: u8,
}

impl Token {
    fn encode(self) -> u64 {
        let t = ((self.key as u64) << 13)
            | (((self.side == Side::Backend) as u64) << 12)
            | ((self.gen as u64) << 4)
            | self.kind as u64;
        debug_assert!(t < 1 << TOKEN_BITS);
        t
    }

    fn decode(t: u64) -> Token {
        Token {
            key: (t >> 13) as usize,
            side: if t & (1 << 12) != 0 {
                Side::Backend
            } else {
                Side::Client
            },
            gen: (t >> 4) as u8,
            kind: (t & 0xf) as u8,
        }
    }
}

/// Wakes a uring worker's loop from another thread: an eventfd its ring polls.
pub struct Waker(EventFd);

impl Waker {
    pub fn wake(&self) -> io::Result<()> {
        self.0.write(1).map(drop).map_err(io::Error::from)
    }
}

/// Executes a worker's operations on its ring.
struct Uring<'b> {
    ring: Ring,
    bufs: &'b BufRing,
    /// Per connection key: the generation of its client and backend socket.
    gens: Vec<[u8; 2]>,
    /// Per connection key and side: the one-shot polls in flight ([`POLLING_IN`],
    /// [`POLLING_OUT`]), so that an edge waited for twice is polled once.
    polls: Vec<[u8; 2]>,
    /// Receives that found no free buffer: (token, length), submitted again when buffers
    /// come back.
    starved: Vec<(Token, u32)>,
    /// Standing receives that ended for want of a buffer: their connections hear that the
    /// socket is readable once buffers come back (and arm them again).
    starved_standing: Vec<Token>,
    /// Starved receives cancelled for a hand-over, reported in the next loop.
    cancelled: Vec<Completion>,
    /// Per listener: its multishot poll is armed.
    accepting: Vec<bool>,
    /// Relays keep one multishot receive per socket (`uring.multishot`).
    multishot: bool,
}

impl Uring<'_> {
    fn gen(&mut self, key: usize, side: Side) -> u8 {
        if self.gens.len() <= key {
            self.gens.resize(key + 1, [0; 2]);
        }
        self.gens[key][side as usize]
    }

    fn token(&mut self, key: usize, side: Side, kind: u8) -> u64 {
        let gen = self.gen(key, side);
        Token {
            key,
            side,
            gen,
            kind,
        }
        .encode()
    }

    /// False for a completion of an operation on a socket closed since.
    fn current(&self, t: Token) -> bool {
        self.gens
            .get(t.key)
            .is_some_and(|g| g[t.side as usize] == t.gen)
    }

    /// After a direct splice or TLS operation that would block (or came up short): one-shot
    /// poll for the edge the connection now waits for; a poll already in flight for that edge
    /// is not doubled.
    fn watch_edge(&mut self, key: usize, fd: BorrowedFd<'_>, side: Side, out: bool) {
        let (mask, k, bit) = if out {
            (libc::POLLOUT as u32, kind::POLL_OUT, POLLING_OUT)
        } else {
            (libc::POLLIN as u32, kind::POLL_IN, POLLING_IN)
        };
        if self.polls.len() <= key {
            self.polls.resize(key + 1, [0; 2]);
        }
        let p = &mut self.polls[key][side as usize];
        if *p & bit != 0 {
            return;
        }
        *p |= bit;
        let t = self.token(key, side, k);
        self.ring.poll(fd, mask, t);
    }

    /// A poll of `t`'s kind completed (or its socket closed): the edge may be polled again.
    fn polled(&mut self, t: Token) {
        let bit = match t.kind {
            kind::POLL_IN => POLLING_IN,
            kind::POLL_OUT => POLLING_OUT,
            _ => return,
        };
        if let Some(p) = self.polls.get_mut(t.key) {
            p[t.side as usize] &= !bit;
        }
    }
}

impl Driver for Uring<'_> {
    fn watch(&mut self, fd: BorrowedFd<'_>, w: Watch) -> io::Result<()> {
        match w {
            Watch::Listener(i) => self.arm_accept(i, fd),
            Watch::Conn(key, Side::Client) => {
                // Errors and hang-ups only (io_uring always includes them): a client that resets
                // while its upgrade waits on the backend ends the connection at once, as with
                // epoll's EPOLLERR.
                let t = self.token(key, Side::Client, kind::GONE);
                self.ring.poll(fd, 0, t);
            }
            Watch::Conn(key, Side::Backend) => {
                self.gen(key, Side::Backend);
            }
        }
        Ok(())
    }

    fn unwatch(&mut self, fd: BorrowedFd<'_>) {
        self.ring.cancel_fd(fd);
        // The listener is closed right after: cancel its accept before it takes a client.
        let _ = self.ring.submit();
    }

    fn exec(&mut self, c: IoCall<'_>) -> Exec {
        let Some(sock) = c.sock else {
            return Exec::Done(Err(io::ErrorKind::NotConnected.into()));
        };
        let scratch_write = matches!(
            c.op,
            IoOp::Write {
                src: Src::Scratch(_),
                ..
            }
        );
        // A read that asks for more than one provided buffer holds, or a write of held bytes
        // larger than one (a forwarded HTTP body of known, large length): recv(2) into the 64 KiB
        // scratch buffer and send(2) from the held bytes, from the loop, as under epoll; not a
        // ring receive and a send per 16 KiB buffer, each send copying its bytes into a fresh
        // allocation (about 150 ring operations per 1 MiB response, half of epoll's rate;
        // bench-results/2026-11-30-uring-http). Small ones stay on the ring.
        let ring_size = self.bufs.size() as usize;
        let large = match c.op {
            IoOp::Read { max, .. } => max > ring_size,
            IoOp::Write { src: Src::Held, .. } => c.held.len() > ring_size,
            _ => false,
        };
        if !sock.can_splice() || scratch_write || large {
            // TLS: the transport frames the socket's bytes itself. A write from the worker's
            // scratch buffer (what a TLS read left there) goes now too: the next connection
            // reuses the buffer, and what a short write leaves is copied from it at once.
            return self.exec_direct(c.key, c.op, sock, c.held, c.scratch);
        }
        let fd = sock.as_fd();
        let side = c.op.side();
        let no_pipe = || io::Error::other("splice without a pipe");
        match c.op {
            IoOp::Read { max, .. } => {
                let len = max.min(self.bufs.size() as usize) as u32;
                let t = self.token(c.key, side, kind::READ);
                self.ring.recv(fd, len, self.bufs.group(), t);
            }
            IoOp::Recv { .. } => {
                // Limited: it ends by itself after RECV_LIMIT bytes, and the relay arms it again
                // only once the destination took them.
                let t = self.token(c.key, side, kind::RECV);
                self.ring.recv_multi(fd, self.bufs.group(), RECV_LIMIT, t);
            }
            IoOp::StopRecv { .. } => {
                // Its last completion (ECANCELED, or an arrival without MORE) tells the
                // connection it is over.
                let t = self.token(c.key, side, kind::RECV);
                self.ring.cancel(t);
                return Exec::Done(Ok(0));
            }
            IoOp::Write { src: Src::Held, .. } => {
                let t = self.token(c.key, side, kind::WRITE_HELD);
                self.ring.send_copy(fd, c.held, t);
            }
            // Carried out directly, above.
            IoOp::Write {
                src: Src::Scratch(_),
                ..
            } => return Exec::Done(Err(io::Error::other("a scratch write is not submitted"))),
            IoOp::Write {
                src: Src::Buf { id, from, len },
                ..
            } => {
                let t = self.token(c.key, side, kind::WRITE_BUF);
                if !self.ring.send_buf(self.bufs, fd, id, from, len, t) {
                    return Exec::Done(Err(io::Error::other("send from a buffer not lent")));
                }
            }
            IoOp::SpliceIn { max, .. } => {
                let Some(pipe) = c.pipe else {
                    return Exec::Done(Err(no_pipe()));
                };
                let r = pipe.fill(fd, max);
                if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                    self.watch_edge(c.key, fd, side, false);
                }
                return Exec::Done(r);
            }
            IoOp::SpliceOut { len, .. } => {
                let Some(pipe) = c.pipe else {
                    return Exec::Done(Err(no_pipe()));
                };
                let r = pipe.drain(fd, len);
                let full = match &r {
                    Ok(n) => *n < len,
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                };
                if full {
                    self.watch_edge(c.key, fd, side, true);
                }
                return Exec::Done(r);
            }
            // Not IORING_OP_SHUTDOWN: the kernel runs it on an io-wq thread and looks its
            // descriptor up only there, so it may act on whatever socket took the number after
            // the connection closed. shutdown(2) is non-blocking and cheap.
            IoOp::Shutdown { .. } => return Exec::Done(sock.shutdown_write().map(|()| 0)),
            // An ioctl on the socket, at once (what is queued now is the question).
            IoOp::Queued { .. } => return Exec::Done(crate::sys::sock::queued(fd)),
        }
        Exec::Submitted
    }

    fn completes(&self) -> bool {
        true
    }

    fn standing(&self) -> bool {
        self.multishot
    }

    fn connect(&mut self, key: usize, addr: SocketAddr) -> io::Result<(TcpStream, Connecting)> {
        let s = crate::sys::sock::stream_socket(addr)?;
        let t = self.token(key, Side::Backend, kind::CONNECT);
        self.ring.connect(s.as_fd(), addr, t);
        Ok((s, Connecting::Started))
    }

    fn close(&mut self, key: usize, side: Side, sock: OwnedFd) {
        // Its polls are cancelled; their completions are dropped as stale.
        self.forget(key, side);
        self.ring.cancel_and_close(sock);
    }

    fn give_back(&mut self, id: BufId) {
        self.bufs.give_back(id);
    }

    fn cancel(&mut self, key: usize, side: Side, fd: BorrowedFd<'_>) {
        self.cancel_conn(key, side, fd);
    }

    fn release(&mut self, key: usize, side: Side, fd: BorrowedFd<'_>) {
        self.release_conn(key, side, fd);
    }

    fn lent_bytes(&self, id: BufId, from: u32, len: u32) -> Option<Vec<u8>> {
        Some(self.bufs.bytes(id, from, len as usize)?.to_vec())
    }
}

/// A worker driven by io_uring, ready to run on its own thread.
pub struct Worker {
    w: worker::Worker,
    waker: Arc<Waker>,
    buffers: (u16, u32),
    multishot: bool,
}

impl Worker {
    pub fn new(cfg: WorkerConfig, uring: &config::Uring) -> io::Result<Worker> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Worker {
            w: worker::Worker::new(cfg),
            waker: Arc::new(Waker(fd)),
            buffers: (uring.buffer_count(), uring.buffer_size as u32),
            // Only where the kernel limits a multishot receive's bytes (see `multishot_note`).
            multishot: uring.multishot && crate::sys::uring::can_cap_multishot(),
        })
    }

    /// Wakes this worker's loop from another thread (after sending it a `Control`).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Runs the loop until the worker has drained. The ring is built here, on the thread
    /// that submits to it (`SINGLE_ISSUER`).
    pub fn run(self) -> io::Result<()> {
        let Worker {
            mut w,
            waker,
            buffers,
            multishot,
        } = self;
        let ring = Ring::new(ENTRIES)?;
        let bufs = BufRing::new(&ring, GROUP, buffers.0, buffers.1)?;
        let mut d = Uring {
            ring,
            bufs: &bufs,
            gens: Vec::new(),
            polls: Vec::new(),
            starved: Vec::new(),
            starved_standing: Vec::new(),
            cancelled: Vec::new(),
            accepting: Vec::new(),
            multishot,
        };
        w.watch_listeners(&mut d)?;
        let wake = Token {
            key: 0,
            side: Side::Client,
            gen: 0,
            kind: kind::WAKE,
        }
        .encode();
        d.ring.poll(waker.0.as_fd(), libc::POLLIN as u32, wake);
        let mut done: Vec<Completion> = Vec::with_capacity(256);
        w.set_driver_stats(UringStats::default());
        w.set_up();
        loop {
            if w.take_accept_wanted() {
                accept_wanted(&mut w, &mut d);
            }
            // Cancelled starved receives are reported without waiting.
            let wait = match d.cancelled.is_empty() {
                true => w.timeout(),
                false => Some(std::time::Duration::ZERO),
            };
            d.ring.submit_and_wait(wait)?;
            w.set_now(Instant::now());
            d.ring.reap(&mut done);
            done.append(&mut d.cancelled);
            let mut returned = 0;
            for c in done.drain(..) {
                let t = Token::decode(c.token);
                match t.kind {
                    kind::WAKE => {
                        let _ = waker.0.read();
                        d.ring.poll(waker.0.as_fd(), libc::POLLIN as u32, wake);
                        w.on_control(&mut d);
                    }
                    kind::ACCEPT => accepted(&mut w, &mut d, t.key, c),
                    _ => completed(&mut w, &mut d, t, c),
                }
                // Buffers given back during the call go back to the kernel only now that no
                // slice of them is alive.
                returned += bufs.flush();
            }
            let stats = d.ring.stats();
            w.set_driver_stats(UringStats {
                submitted: stats.submitted,
                completed: stats.completed,
                loops: stats.waits,
                buffers_exhausted: bufs.exhausted.get(),
            });
            if w.after_events(&mut d) {
                return Ok(());
            }
            returned += bufs.flush();
            if returned > 0 && !(d.starved.is_empty() && d.starved_standing.is_empty()) {
                retry_starved(&mut w, &mut d);
                bufs.flush();
            }
        }
    }
}

/// How relays receive under `uring`, for the start-up report: multishot receives need the
/// kernel's byte limit (Linux 6.17), without which a stalled reader's source would hand over
/// buffer after buffer.
pub fn multishot_note(uring: &config::Uring) -> String {
    let limit = RECV_LIMIT / 1024;
    match (uring.multishot, crate::sys::uring::can_cap_multishot()) {
        (true, true) => format!("multishot receives of up to {limit} KiB each (uring.multishot)"),
        (true, false) => "one receive per message (this kernel cannot limit a multishot receive's bytes, Linux 6.17+; uring.multishot is ignored)".to_owned(),
        (false, _) => "one receive per message (uring.multishot = false)".to_owned(),
    }
}

/// The ring's setup and buffers, for the start-up report; an error says why io_uring cannot
/// run here.
pub fn probe() -> io::Result<Setup> {
    // The io-uring crate's prebuilt kernel bindings are generated for 64-bit targets; on 32-bit
    // ones (armv7 gateways) they are unchecked, so the driver is not offered there.
    if cfg!(target_pointer_width = "32") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the io_uring driver is not built for 32-bit targets",
        ));
    }
    crate::sys::uring::probe()
}

/// A completion of a connection's operation.
fn completed(w: &mut worker::Worker, d: &mut Uring<'_>, t: Token, c: Completion) {
    if t.kind == kind::WRITE_BUF {
        d.bufs.end_send(c.aux as u16);
    }
    let bufs = d.bufs;
    let n = c.res.max(0) as u32;
    // A buffer the kernel put bytes in: the application holds them now.
    let filled = c
        .buffer()
        .and_then(|id| Some((id, bufs.arrived(id, n, c.buffer_more())?)));
    if !d.current(t) {
        // The socket was closed: nobody waits for this any more.
        if let Some((id, _)) = filled {
            bufs.give_back(id);
        }
        return;
    }
    let side = t.side;
    // Cancelled (a standing receive stopped, or what a hand-over waits for): nothing happened.
    let res = match c.result() {
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
            Err(io::ErrorKind::Interrupted.into())
        }
        r => r,
    };
    match t.kind {
        kind::READ | kind::RECV => {
            let standing = t.kind == kind::RECV;
            if c.res == -libc::ENOBUFS {
                bufs.exhausted.set(bufs.exhausted.get() + 1);
                if !standing {
                    d.starved.push((t, bufs.size()));
                    return;
                }
                // The multishot receive is over: the connection waits for readiness, which
                // `retry_starved` reports once buffers are back.
                d.starved_standing.push(t);
            }
            let res = match res {
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                r => r,
            };
            let input = filled.filter(|_| n > 0).and_then(|(id, at)| {
                Some(Input {
                    id,
                    at,
                    room: bufs.size().saturating_sub(at),
                    bytes: bufs.bytes(id, at, n as usize)?,
                })
            });
            let res = match (input, filled) {
                (None, Some((id, _))) => {
                    bufs.give_back(id);
                    res
                }
                // Bytes without a buffer to find them in: cannot happen with a provided
                // buffer receive; fail the read rather than relay garbage.
                (None, None) if n > 0 => {
                    Err(io::Error::other("a receive reported bytes but no buffer"))
                }
                _ => res,
            };
            let op = if standing {
                IoOp::Recv {
                    side,
                    more: c.more(),
                }
            } else {
                IoOp::Read { side, max: 0 }
            };
            w.completed(t.key, op, res, input, d);
        }
        kind::WRITE_HELD | kind::WRITE_BUF => {
            let src = if t.kind == kind::WRITE_BUF {
                Src::Buf {
                    id: c.aux as u16,
                    from: 0,
                    len: 0,
                }
            } else {
                Src::Held
            };
            let op = IoOp::Write { side, src };
            w.completed(t.key, op, res, None, d);
        }
        kind::CONNECT => w.connected(t.key, res.map(drop), d),
        kind::POLL_IN | kind::POLL_OUT | kind::GONE => {
            d.polled(t);
            let Ok(mask) = res else {
                return; // cancelled
            };
            let mask = mask as i16;
            let err = mask & (libc::POLLERR | libc::POLLHUP) != 0;
            let hup = err || mask & libc::POLLRDHUP != 0;
            let ev = match t.kind {
                kind::POLL_IN => Event::Ready {
                    side,
                    readable: true,
                    writable: false,
                    hup,
                    gone: err,
                },
                kind::POLL_OUT => Event::Ready {
                    side,
                    readable: err,
                    writable: true,
                    hup,
                    gone: err,
                },
                _ => Event::Ready {
                    side,
                    readable: true,
                    writable: err,
                    hup,
                    gone: err,
                },
            };
            w.ready(t.key, ev, d);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token {
                key: 0,
                side: Side::Client,
                gen: 0,
                kind: kind::READ,
            },
            Token {
                key: (1 << 31) - 1,
                side: Side::Backend,
                gen: 255,
                kind: kind::WAKE,
            },
        ] {
            assert_eq!(Token::decode(t.encode()), t);
        }
    }
}
