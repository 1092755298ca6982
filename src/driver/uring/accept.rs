//! Accepting under io_uring: a multishot poll per listener, and accept(2) from the loop when
//! it fires (as epoll does), not the ring's multishot accept.
//!
//! A listener is shared with other processes: a worker process's with its supervisor (which
//! keeps it open so that when a worker dies, the clients the kernel hashes to its socket wait
//! in the backlog for the replacement), and every listener with the new process during a
//! binary upgrade. A multishot accept takes clients out of the backlog itself, in the kernel,
//! whenever they come, and the process that owns the ring can no longer hand them back:
//!
//! - a SIGKILLed worker process's ring can still accept on its way out (a process runs its
//!   ring's pending work as it exits, and the kernel tears the ring down asynchronously after
//!   that); such a client was closed with the process instead of waiting for the replacement.
//!   Seen in tests/workers.rs's killed-worker test: 4 runs in 18 lost one of the clients that
//!   connect right after the SIGKILL, each closed before any answer; with the poll, none in 20.
//!   (Whether those clients were accepted during the exit or by the ring after it was not told
//!   apart.)
//! - a worker that stops accepting (a binary upgrade hands over, a reload removes a listener)
//!   cancels its accept, but clients the kernel accepted before the cancel arrive after the
//!   listener is gone, and were closed. Seen in tests/upgrade.rs: a new client failed across
//!   the upgrade under worker threads.
//!
//! A poll takes nothing out of the backlog: a poll that fires for a ring that no longer wants
//! clients does so in vain, and they wait for whoever accepts next. (The multishot poll is also
//! not exclusive, unlike the accept's wait.) The price is one accept(2) per client, as epoll
//! pays.

use super::{kind, worker, Token, Uring};
use crate::core::relay::Side;
use crate::sys::uring::Completion;
use std::os::fd::{AsFd, BorrowedFd};

impl Uring<'_> {
    /// Arms listener `i`'s poll.
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
        self.ring.poll_multi(fd, libc::POLLIN as u32, t);
    }
}

/// The worker wants every listener tried (at start, after a pause, a listener added): each
/// gets its poll if it has none, and the clients waiting already are accepted now (a poll fires
/// only when one more comes).
pub(super) fn accept_wanted(w: &mut worker::Worker, d: &mut Uring<'_>) {
    for i in 0..w.listener_count() {
        if !d.accepting.get(i).copied().unwrap_or(false) {
            if let Some(l) = w.listener(i) {
                d.arm_accept(i, l.as_fd());
            }
        }
        w.accept_all(i, d);
    }
}

/// A completion of listener `i`'s poll: clients wait (or the poll ended).
pub(super) fn accepted(w: &mut worker::Worker, d: &mut Uring<'_>, i: usize, c: Completion) {
    let more = c.more();
    if !more {
        if let Some(a) = d.accepting.get_mut(i) {
            *a = false;
        }
    }
    match c.result() {
        // Cancelled: the listener is being removed.
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return,
        Err(_) => {}
        Ok(_) => w.accept_all(i, d),
    }
    if !more {
        if let Some(l) = w.listener(i) {
            d.arm_accept(i, l.as_fd());
        }
    }
}
