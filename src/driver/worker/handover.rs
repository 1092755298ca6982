//! The worker's side of a binary upgrade ([`crate::driver::upgrade`]): handing established
//! tunnels over (old process) and taking them in (new process).

use super::{ctx, lend, Driver, Slot, Watch, Worker};
use crate::core::conn::Conn;
use crate::core::relay::{Held, Pipes, Side};
use crate::driver::upgrade::{wire::TunnelState, Batch, Tunnel, BATCH, BATCH_BYTES};
use crate::driver::HandOver;
use crate::sys::pipe::Pipe;
use std::io;
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
            self.unsettle_all(d);
            return;
        }
        // Relays between two operations go now. One with an operation in flight (a completion
        // driver always has a receive waiting) starts nothing more, and the driver cancels
        // what is in flight: it goes in a later sweep, once every completion is in.
        let mut keys = Vec::new();
        for (k, s) in self.conns.iter_mut() {
            let Slot::Live(e) = s else { continue };
            let Some(backend) = &e.backend else { continue };
            if self.tls.contains_key(&k) {
                continue;
            }
            // Established at the signal: gone in the first sweep, or settled by it.
            let at_signal = first || self.at_signal.binary_search(&k).is_ok();
            if e.conn.can_hand_over() {
                keys.push((k, at_signal));
            } else if e.conn.settle() {
                d.cancel(k, Side::Client, e.client.as_fd());
                d.cancel(k, Side::Backend, backend.as_fd());
                if first {
                    // Slab keys come in order: the list stays sorted.
                    self.at_signal.push(k);
                }
            }
        }
        // Batches of tunnels established at the signal ([1]) and of the rest ([0]).
        let mut batches: [Vec<Tunnel>; 2] = Default::default();
        let mut bytes = [0; 2];
        for (k, at_signal) in keys {
            let Some(t) = self.export(k, d) else { continue };
            let b = usize::from(at_signal);
            bytes[b] += t.pending();
            batches[b].push(t);
            if batches[b].len() >= BATCH || bytes[b] >= BATCH_BYTES {
                self.send_batch(std::mem::take(&mut batches[b]), at_signal);
                bytes[b] = 0;
            }
        }
        for (b, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                self.send_batch(batch, b == 1);
            }
        }
    }

    /// The hand-over stopped: relays that were waiting for it go on here.
    fn unsettle_all(&mut self, d: &mut impl Driver) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(Slot::Live(e)) = self.conns.get_mut(k) {
                if e.conn.unsettle() {
                    self.drive(k, d);
                }
            }
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
        let (mut handed, held, released) = e.conn.hand_over(&mut cx, &self.time)?;
        let [up, down] = held;
        for (dir, held) in [(&mut handed.relay.up, up), (&mut handed.relay.down, down)] {
            let Some(held) = held else { continue };
            let Some(mut bytes) = self.read_out(held, d) else {
                continue;
            };
            // They came before what the state holds.
            bytes.extend_from_slice(&dir.pending);
            dir.pending = bytes;
        }
        let slot = self.conns.get_mut(key)?;
        let Slot::Live(e) = std::mem::replace(slot, Slot::Dead) else {
            return None;
        };
        self.dead.push(key);
        let client = e.client;
        let backend = e.backend?;
        // Explicitly: the sockets live on in the new process, so closing ours would not take
        // them out of this epoll set (or cancel what waits on them in this ring).
        d.release(key, Side::Client, client.as_fd());
        d.release(key, Side::Backend, backend.as_fd());
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

    /// The bytes a tunnel's direction holds outside its state (a pipe's, or a driver
    /// buffer's), read out; what held them goes back.
    fn read_out(&mut self, held: Held<Pipe>, d: &mut impl Driver) -> Option<Vec<u8>> {
        let (what, n, got) = match held {
            Held::Pipe(pipe, n) => {
                let got = pipe.read_out(n as usize);
                if got.is_ok() {
                    self.pool.give(pipe);
                } else {
                    self.pool.discard(pipe);
                }
                ("pipe", n, got)
            }
            Held::Lent {
                id,
                from,
                len,
                holds,
            } => {
                let got = d
                    .lent_bytes(id, from, len)
                    .ok_or_else(|| io::Error::other("not a buffer the tunnel holds"));
                for _ in 0..holds {
                    d.give_back(id);
                }
                ("driver buffer", len, got)
            }
        };
        got.map_err(|err| {
            eprintln!(
                "wsplice: worker {}: reading {n} bytes out of a tunnel's {what} for the hand-over: {err}; they are lost",
                self.id
            )
        })
        .ok()
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
