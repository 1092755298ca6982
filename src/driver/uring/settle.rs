//! What a binary upgrade asks of the ring ([`crate::driver::upgrade`]), and receives that wait
//! for a free buffer.
//!
//! A relay under io_uring always has something in flight: a receive on each socket (in the
//! ring, or waiting here for a free buffer), maybe a send waiting for room. To hand a tunnel
//! over, the worker settles its relay (nothing new starts) and cancels what is in flight on
//! both sockets ([`Uring::cancel_conn`]); every operation then completes, cancelled or done (the
//! bytes a receive brought meanwhile are kept as any arrival, in the ring's buffer), and the
//! relay is between two operations. Its bytes in ring buffers are copied out into the tunnel's
//! pending bytes, the buffers go back, and its sockets leave the ring ([`Uring::forget`]) before
//! they go to the new process.
//!
//! ```text
//!   settle ─▶ cancel_fd(client), cancel_fd(backend) ─▶ CQEs: ECANCELED (or done) ─▶ Interrupted
//!   starved receive (no buffer, not in the ring) ─▶ a cancelled completion in the next loop
//!   between two operations ─▶ lent bytes copied out, buffers back ─▶ forget ─▶ SCM_RIGHTS
//! ```

use super::{worker, Uring};
use crate::core::conn::Event;
use crate::core::relay::Side;
use crate::sys::uring::Completion;
use std::os::fd::BorrowedFd;

impl Uring<'_> {
    /// Cancels every operation in flight on connection `key`'s socket `fd`: each completes
    /// (cancelled, or done before the cancel reached it). A receive that waits here for a free
    /// buffer completes as cancelled in the next loop.
    pub(super) fn cancel_conn(&mut self, key: usize, side: Side, fd: BorrowedFd<'_>) {
        self.ring.cancel_fd(fd);
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.starved)
            .into_iter()
            .partition(|(t, _)| t.key == key && t.side == side);
        self.starved = rest;
        for (t, _) in mine {
            self.cancelled.push(Completion {
                token: t.encode(),
                aux: 0,
                res: -libc::ECANCELED,
                flags: 0,
            });
        }
    }

    /// Connection `key`'s socket on `side` is no longer its own (closed, or handed to another
    /// process): completions of what was submitted on it are recognised as stale and dropped,
    /// its polls may be armed anew for the key's next socket.
    pub(super) fn forget(&mut self, key: usize, side: Side) {
        self.gen(key, side);
        let g = &mut self.gens[key][side as usize];
        *g = g.wrapping_add(1);
        if let Some(p) = self.polls.get_mut(key) {
            p[side as usize] = 0;
        }
    }

    /// Connection `key`'s socket `fd` leaves the worker open (handed over): forgotten, and what
    /// still waits on it in the ring (a poll) is cancelled.
    pub(super) fn release_conn(&mut self, key: usize, side: Side, fd: BorrowedFd<'_>) {
        self.forget(key, side);
        self.ring.cancel_fd(fd);
    }
}

/// Buffers came back: receives that found none are submitted again, and connections whose
/// standing receive ended for want of one hear that their socket is readable.
pub(super) fn retry_starved(w: &mut worker::Worker, d: &mut Uring<'_>) {
    for (t, len) in std::mem::take(&mut d.starved) {
        if !d.current(t) {
            continue;
        }
        if let Some(fd) = w.socket(t.key, t.side) {
            d.ring.recv(fd, len, d.bufs.group(), t.encode());
        }
    }
    for t in std::mem::take(&mut d.starved_standing) {
        if !d.current(t) {
            continue;
        }
        let ev = Event::Ready {
            side: t.side,
            readable: true,
            writable: false,
            hup: false,
            gone: false,
        };
        w.ready(t.key, ev, d);
    }
}
