//! Accepting under io_uring. A worker thread's listener has a multishot accept: the kernel
//! accepts each client as it comes and the completion carries its socket. A worker process's
//! listener has a multishot poll instead, and the loop accepts with accept(2) when it fires.
//!
//! A worker process shares each listening socket with its supervisor, which keeps it open so
//! that when a worker dies, the clients the kernel hashes to that socket wait in its backlog
//! for the replacement. A multishot accept is the wrong thing to leave on such a socket: the
//! ring accepts clients itself, in the kernel, and a ring outlives its process's last
//! instruction (a SIGKILLed process can still run its ring's pending work on its way out, and
//! the kernel tears the ring down asynchronously after that). A client the ring accepts then is
//! closed with the process instead of waiting for the replacement. Seen in
//! tests/workers.rs's killed-worker test: 4 runs in 18 lost one of the clients that connect
//! right after the SIGKILL, each closed before any answer; with the poll, none in 20. (Whether
//! those clients were accepted during the exit or by the torn-down ring was not told apart.) A
//! poll takes nothing out of the backlog: a dying ring's poll fires in vain. The multishot
//! poll is also not exclusive, unlike the accept's wait, so it cannot take a wake-up from the
//! replacement's.

use super::{kind, worker, Token, Uring};
use crate::core::relay::Side;
use crate::sys::uring::Completion;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};

impl Uring<'_> {
    /// Arms listener `i`'s accept (or its poll, see the module docs).
    pub(super) fn arm_accept(&mut self, i: usize, fd: BorrowedFd<'_>) {
        if self.accepting.len() <= i {
            self.accepting.resize(i + 1, false);
        }
        self.accepting[i] = true;
        let t = Token {
            key: i,
            side: Side::Client,
            gen: 0,
            kind: kind::ACCEPT,
        }
        .encode();
        if self.accept_by_poll {
            self.ring.poll_multi(fd, libc::POLLIN as u32, t);
        } else {
            self.ring.accept_multi(fd, t);
        }
    }
}

/// The worker wants every listener tried (at start, after a pause, a listener added): each
/// without an accept (or poll) armed gets one, which takes the clients waiting already; under
/// polls, those waiting are accepted now (a poll fires only when one more comes).
pub(super) fn accept_wanted(w: &mut worker::Worker, d: &mut Uring<'_>) {
    for i in 0..w.listener_count() {
        if d.accepting.get(i).copied().unwrap_or(false) {
            if d.accept_by_poll {
                w.accept_all(i, d);
            }
        } else if let Some(l) = w.listener(i) {
            d.arm_accept(i, l.as_fd());
            if d.accept_by_poll {
                w.accept_all(i, d);
            }
        }
    }
}

/// A completion of listener `i`'s multishot accept, or of its poll.
pub(super) fn accepted(w: &mut worker::Worker, d: &mut Uring<'_>, i: usize, c: Completion) {
    let more = c.more();
    if !more {
        if let Some(a) = d.accepting.get_mut(i) {
            *a = false;
        }
    }
    let res = c.result();
    match (c.accepted, res) {
        (Some(fd), _) => {
            let s = TcpStream::from(fd);
            // The client may be gone already (ENOTCONN): nothing to serve.
            if let (Ok(peer), true) = (s.peer_addr(), w.listener(i).is_some()) {
                w.accepted(i, s, peer, d);
            }
        }
        (None, Err(e)) if e.raw_os_error() == Some(libc::ECANCELED) => {}
        (None, Err(e)) => {
            // EMFILE pauses accepting (the worker re-arms when descriptors are freed or the
            // pause is over); other errors concern one client.
            if w.accept_failed(&e) && !more {
                if let Some(l) = w.listener(i) {
                    d.arm_accept(i, l.as_fd());
                }
            }
        }
        // The poll fired: clients wait.
        (None, Ok(_)) if d.accept_by_poll => {
            w.accept_all(i, d);
            if !more {
                if let Some(l) = w.listener(i) {
                    d.arm_accept(i, l.as_fd());
                }
            }
        }
        (None, Ok(_)) => {}
    }
}
