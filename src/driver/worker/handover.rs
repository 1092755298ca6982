//! The worker's side of a binary upgrade ([`crate::driver::upgrade`]): handing established
//! tunnels over (old process) and taking them in (new process).

use super::{ctx, lend, Driver, Slot, Watch, Worker};
use crate::core::conn::Conn;
use crate::core::relay::{Pipes, Side};
use crate::driver::upgrade::{wire::TunnelState, Batch, Tunnel, BATCH, BATCH_BYTES};
use crate::driver::HandOver;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

impl Worker {
    /// Starts handing over: no more accepting (the new process accepts from the same
    /// sockets), idle keep-alive connections close, what is under way finishes here, and every
    /// established tunnel goes to the new process as soon as it is between two operations.
    /// What cannot go (TLS tunnels, HTTP exchanges) ends here by `h.until` at the latest.
    pub(super) fn start_hand_over(&mut self, h: HandOver, d: &mut impl Driver) {
        if self.draining.is_some() {
            return; // already stopping: nothing new to hand over to
        }
        let until = h.until;
        self.handing = Some(h);
        self.drain_from(until, d);
        self.hand_over_sweep(d, true);
    }

    /// Hands over every tunnel that can go now, in batches. Called after each batch of events.
    pub(super) fn hand_over_ready(&mut self, d: &mut impl Driver) {
        self.hand_over_sweep(d, false);
    }

    fn hand_over_sweep(&mut self, d: &mut impl Driver, first: bool) {
        let Some(h) = &self.handing else { return };
        if h.abort.load(Ordering::Relaxed) {
            eprintln!(
                "wsplice: worker {}: the new process stopped taking tunnels; the rest finish here",
                self.id
            );
            self.handing = None;
            return;
        }
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Live(e)
                    if e.backend.is_some()
                        && e.conn.can_hand_over()
                        && !self.tls.contains_key(&k) =>
                {
                    Some(k)
                }
                _ => None,
            })
            .collect();
        let mut batch = Vec::new();
        let mut bytes = 0;
        for k in keys {
            let Some(t) = self.export(k, d) else { continue };
            bytes += t.pending();
            batch.push(t);
            if batch.len() >= BATCH || bytes >= BATCH_BYTES {
                self.send_batch(std::mem::take(&mut batch), first);
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.send_batch(batch, first);
        }
    }

    fn send_batch(&mut self, tunnels: Vec<Tunnel>, first: bool) {
        self.counters.upgrade_handed += tunnels.len() as u64;
        if let Some(h) = &self.handing {
            // The receiver lives until every worker is done.
            let _ = h.out.send(Batch { tunnels, first });
        }
    }

    /// Takes connection `key` out of this worker as a [`Tunnel`], if it is an established
    /// relay between two operations.
    fn export(&mut self, key: usize, d: &mut impl Driver) -> Option<Tunnel> {
        let Some(Slot::Live(e)) = self.conns.get_mut(key) else {
            return None;
        };
        let mut cx = lend!(self, d);
        let (mut handed, pipes, released) = e.conn.hand_over(&mut cx, &self.time)?;
        let [up, down] = pipes;
        for (dir, held) in [(&mut handed.relay.up, up), (&mut handed.relay.down, down)] {
            let Some((pipe, n)) = held else { continue };
            match pipe.read_out(n as usize) {
                Ok(bytes) => {
                    dir.pending = bytes;
                    self.pool.give(pipe);
                }
                Err(err) => {
                    eprintln!(
                        "wsplice: worker {}: reading {n} bytes out of a tunnel's pipe for the hand-over: {err}",
                        self.id
                    );
                    self.pool.discard(pipe);
                }
            }
        }
        let slot = self.conns.get_mut(key)?;
        let Slot::Live(e) = std::mem::replace(slot, Slot::Dead) else {
            return None;
        };
        self.dead.push(key);
        let client = e.client;
        let backend = e.backend?;
        // Explicitly: the sockets live on in the new process, so closing ours would not take
        // them out of this epoll set.
        d.unwatch(client.as_fd());
        d.unwatch(backend.as_fd());
        self.total.release();
        self.pool.used.ended(true);
        if let Some(ip) = released.counted_ip {
            self.limiter.release(ip);
        }
        let key = self.backends.key(released.backend_id);
        self.backends.closed(released.backend_id);
        Some(Tunnel {
            client,
            backend,
            state: TunnelState {
                route: key.map_or(0, |(route, _)| route),
                backend: key.map(|(_, addr)| addr),
                handed,
            },
        })
    }

    /// Takes in tunnels handed over by the old process: each joins the slab as an established
    /// relay and resumes at once (its pending bytes first).
    pub(super) fn adopt(&mut self, tunnels: Vec<Tunnel>, d: &mut impl Driver) {
        for t in tunnels {
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let watched = d
                .watch(t.client.as_fd(), Watch::Conn(key, Side::Client))
                .and_then(|()| d.watch(t.backend.as_fd(), Watch::Conn(key, Side::Backend)));
            if let Err(e) = watched {
                eprintln!(
                    "wsplice: worker {}: cannot watch a handed-over tunnel: {e}; it is closed",
                    self.id
                );
                d.unwatch(t.client.as_fd());
                continue;
            }
            // The tunnel exists already: it counts whatever the limits say now.
            self.total.force_acquire();
            self.pool.used.relay_opened();
            let handed = t.state.handed;
            let counted = handed
                .counted_ip
                .filter(|ip| self.limiter.acquire(*ip) == Some(true));
            let log = self.log.as_ref().map(|_| self.params.settings.clone());
            let mut cx = lend!(self, d);
            let mut conn = Conn::taken_over(handed, true, counted, log, &mut cx, &self.time);
            if let Some(addr) = t.state.backend {
                let key = (t.state.route, addr);
                let id = self.backends.id(key);
                self.backends.counts(key).active += 1;
                conn.set_backend_id(id);
            }
            entry.insert(Slot::Live(super::Entry {
                client: t.client,
                backend: Some(t.backend),
                conn,
            }));
            self.counters.upgrade_adopted += 1;
            self.drive(key, d);
        }
    }
}
