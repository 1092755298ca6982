//! A binary upgrade with worker processes ([`crate::driver::upgrade`]), the supervisors' side.
//!
//! ```text
//!  old supervisor (SIGUSR2)                     new supervisor (same path, same argv)
//!  every worker's listening sockets ──L──────▶ its workers start on them (same accept queues)
//!                                              one socketpair per new worker: one end to it
//!  ◀──────── R ready + the other ends ───────── ("adopt"), the other with `ready`
//!  old worker i ◀─ "handover MS" + end i mod N
//!  old worker i ── T tunnels (state, both sockets) ──────────────────▶ new worker i mod N
//!  workers exit once empty; D done ──────────▶ (tunnels that came on the upgrade socket,
//!  exit 0                                       from a worker-threads process, are passed on)
//! ```
//!
//! A new process that runs worker threads sends no ends: the old workers then write on copies
//! of the upgrade socket itself, which its threads read.

use super::Supervisor;
use crate::driver::upgrade::{HandedOver, Launched, SEND_BUFFER_BYTES};
use crate::sys::ipc;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

impl Supervisor {
    /// Every listening socket, every worker's (configured address, socket), for the new
    /// process.
    pub fn listener_fds(&self) -> Vec<(SocketAddr, BorrowedFd<'_>)> {
        self.listen
            .iter()
            .flat_map(|l| l.socks.iter().map(move |s| (l.want, s.as_fd())))
            .collect()
    }

    /// The old side, once the new process confirmed: every worker stops accepting and hands
    /// its established tunnels over (on its channel to a new worker, or on the upgrade
    /// socket); what cannot go (TLS tunnels, HTTP exchanges) ends here by `drain` at the
    /// latest. Returns once every worker has exited, with what they handed over.
    pub fn hand_over(&mut self, l: &mut Launched, drain: Duration) -> HandedOver {
        self.stopping = true;
        self.handed = Some(HandedOver::default());
        for s in &mut self.slots {
            s.restart_at = None;
        }
        let channels = std::mem::take(&mut l.channels);
        let order = format!("handover {}", drain.as_millis());
        let mut k = 0;
        for id in 0..self.slots.len() {
            let s = &self.slots[id];
            let Some(ctl) = s.ctl.clone().filter(|_| s.alive) else {
                continue;
            };
            let sock = match channels.len() {
                0 => l.sock_copy(),
                n => channels[k % n].try_clone(),
            };
            k += 1;
            let sent = sock.and_then(|c| ipc::send(&*ctl, order.as_bytes(), &[c.as_fd()]));
            if let Err(e) = sent {
                eprintln!(
                    "wsplice: upgrade: worker {id}: cannot order its hand-over ({e}); it drains instead, closing its tunnels by timeouts.drain"
                );
                let _ = ipc::send(
                    &*ctl,
                    format!("drain {}", drain.as_millis()).as_bytes(),
                    &[],
                );
            }
        }
        // The workers hold their own copies: a channel ends once each of them is done.
        drop(channels);
        while let Some(sig) = self.next_signal() {
            eprintln!(
                "wsplice: signal {sig} during the binary upgrade: ignored; this process exits once its workers have handed their tunnels over (TLS tunnels and HTTP exchanges end here, by timeouts.drain at the latest)"
            );
        }
        let done = self.handed.take().unwrap_or_default();
        l.done(done.tunnels);
        l.reap();
        done
    }

    /// The new side, serving: one channel per worker process (its end sent to it, told to
    /// adopt what arrives); the other ends, for the old process's workers.
    pub fn adopt_channels(&self) -> io::Result<Vec<OwnedFd>> {
        let mut theirs = Vec::new();
        for s in &self.slots {
            let Some(ctl) = s.ctl.as_ref().filter(|_| s.alive) else {
                continue;
            };
            let (mine, old) = ipc::pair()?;
            // The old workers send on this end: whole batches, pending bytes included.
            let _ = ipc::set_send_buffer(&old, SEND_BUFFER_BYTES);
            ipc::send(&**ctl, b"adopt", &[mine.as_fd()])?;
            theirs.push(old);
        }
        Ok(theirs)
    }
}
