//! The worker's control: reload and drain requests from the control thread, and the listeners
//! they add and remove.

use super::{Driver, Watch, Worker};
use crate::core::conn::Event;
use crate::driver::Control;
use crate::sys::sock::tune_listener;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;

impl Worker {
    /// Applies reload and drain requests from the control thread.
    pub fn on_control(&mut self, d: &mut impl Driver) {
        self.changed = true;
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                Control::Reload(r) => {
                    let r = *r;
                    for addr in r.remove {
                        self.remove_listener(addr, d);
                    }
                    self.pool.pipes.set_limits(
                        r.params.max_pipes,
                        r.params.pipe_size,
                        r.params.large_pipes,
                    );
                    self.pool.plan = r.params.memory;
                    self.backend_pool
                        .set_limits(r.params.pool_max_idle, r.params.pool_idle_timeout);
                    self.params = r.params;
                    self.tune_listeners();
                    self.routes.know(&self.params.settings.routes);
                    self.backends.set_routes(&self.params.settings.routes);
                    if self.draining.is_none() {
                        for (addr, l) in r.add {
                            if let Err(e) = self.add_listener(addr, l, d) {
                                eprintln!("wsplice: worker {}: cannot watch {addr}: {e}", self.id);
                            }
                        }
                    }
                    let _ = r.applied.send(self.id);
                }
                Control::Drain(until) => self.drain_from(until, d),
                Control::HandOver(h) => self.start_hand_over(h, d),
                Control::Adopt(tunnels) => self.adopt(tunnels, d),
            }
        }
    }

    /// Stops accepting and tells every connection the proxy stops; what is left at `until`
    /// is closed.
    pub(super) fn drain_from(&mut self, until: std::time::Instant, d: &mut impl Driver) {
        if self.draining.is_none() {
            self.draining = Some(until);
            self.backend_pool.clear();
            let addrs: Vec<SocketAddr> = self.listeners.iter().flatten().map(|(a, _)| *a).collect();
            for a in addrs {
                self.remove_listener(a, d);
            }
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for k in keys {
                self.ready(k, Event::Draining, d);
            }
        }
    }

    fn add_listener(
        &mut self,
        addr: SocketAddr,
        l: TcpListener,
        d: &mut impl Driver,
    ) -> io::Result<()> {
        let i = match self.listeners.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.listeners.push(None);
                self.listeners.len() - 1
            }
        };
        l.set_nonblocking(true)?;
        if tune_listener(&l, &self.params.tuning).is_err() {
            self.listeners_tuned = false;
        }
        d.watch(l.as_fd(), Watch::Listener(i))?;
        self.listeners[i] = Some((addr, l));
        // Edge-triggered: clients may already wait in the backlog.
        self.accept_wanted = true;
        Ok(())
    }

    fn remove_listener(&mut self, addr: SocketAddr, d: &mut impl Driver) {
        for slot in &mut self.listeners {
            if slot.as_ref().is_some_and(|(a, _)| *a == addr) {
                if let Some((_, l)) = slot.take() {
                    d.unwatch(l.as_fd());
                }
            }
        }
    }
}
