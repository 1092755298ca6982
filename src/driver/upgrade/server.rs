//! The running [`Server`]'s side of an upgrade: the sockets it passes, the order to hand over,
//! and the delivery of arriving tunnels to its workers.

use super::{Batch, Tunnel};
use crate::driver::{bind_error, Control, HandOver, Server, Wake};
use crate::sys::sock::{reuseport_listener, tune_listener};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::Sender;
use std::time::Instant;

/// The sockets an upgrade passed for configured address `want` (taken out of `inherited`),
/// one more bound with SO_REUSEPORT per worker beyond them; None if none were passed.
pub(crate) fn take_passed(
    inherited: &mut Vec<(SocketAddr, TcpListener)>,
    want: SocketAddr,
    workers: usize,
    cfg: &crate::config::Config,
) -> io::Result<Option<(SocketAddr, Vec<TcpListener>)>> {
    let (passed, rest): (Vec<_>, Vec<_>) = std::mem::take(inherited)
        .into_iter()
        .partition(|(a, _)| *a == want);
    *inherited = rest;
    let mut passed: Vec<TcpListener> = passed.into_iter().map(|(_, l)| l).collect();
    let Some(first) = passed.first() else {
        return Ok(None);
    };
    let actual = first.local_addr()?;
    // The old binary's options may differ: this configuration's apply to what is accepted next.
    let tuning = crate::driver::listener_tuning(cfg);
    for l in &passed {
        // Best effort, as for a new listener: the worker falls back to tuning each client.
        let _ = tune_listener(l, &tuning);
    }
    while passed.len() < workers {
        passed.push(reuseport_listener(actual, 4096, &tuning).map_err(|e| bind_error(actual, e))?);
    }
    Ok(Some((actual, passed)))
}

/// Hands tunnels that arrive from an upgrade to the workers, in turn (any thread).
pub struct Adopter {
    workers: Vec<(Sender<Control>, Wake)>,
    next: usize,
}

impl Adopter {
    /// Gives `batch` to the next worker.
    pub fn deliver(&mut self, batch: Vec<Tunnel>) {
        if self.workers.is_empty() {
            return;
        }
        let (tx, wake) = &self.workers[self.next % self.workers.len()];
        self.next = self.next.wrapping_add(1);
        if tx.send(Control::Adopt(batch)).is_ok() {
            let _ = wake.wake();
        }
    }
}

impl Server {
    /// Every listening socket, (configured address, socket), for a binary upgrade.
    pub fn listener_fds(&self) -> Vec<(SocketAddr, OwnedFd)> {
        let Ok(kept) = self.sockets.lock() else {
            return Vec::new();
        };
        kept.iter()
            .filter_map(|(a, l)| Some((*a, l.as_fd().try_clone_to_owned().ok()?)))
            .collect()
    }

    /// A binary upgrade confirmed: every worker stops accepting and hands its tunnels over
    /// to `out`; what cannot go ends by `until`. The workers stop once they hold nothing
    /// ([`Server::join`] returns).
    pub fn hand_over(&mut self, out: Sender<Batch>, abort: &super::Abort, until: Instant) {
        for w in &self.workers {
            let h = HandOver {
                out: out.clone(),
                abort: abort.clone(),
                until,
            };
            self.send(w, Control::HandOver(h));
        }
        // The new process holds the sockets now; our copies go.
        if let Ok(mut kept) = self.sockets.lock() {
            kept.clear();
        }
    }

    /// Hands tunnels arriving from the process this one upgraded from to the workers.
    pub fn adopter(&self) -> Adopter {
        Adopter {
            workers: self
                .workers
                .iter()
                .map(|w| (w.control.clone(), w.waker.clone()))
                .collect(),
            next: 0,
        }
    }
}
