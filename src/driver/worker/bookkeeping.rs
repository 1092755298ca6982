//! The worker's bookkeeping: counting what connections report, ending connections, and the
//! work after each batch of events (timers, reaping, drain, shrinking, publishing counters).

use super::{Driver, Slot, Worker, PUBLISH_EVERY, SHRINK_AFTER};
use crate::core::conn::{ConnLog, End, EndReason, Event, Note};
use crate::core::relay::Side;
use crate::core::timer::at_or_before;
use crate::driver::access_log::{LogSink, Record};
use std::time::Instant;

impl Worker {
    /// Counts what a connection reported.
    pub(super) fn note(&mut self, key: usize, n: Note) {
        match n {
            Note::BackendFailed(addr, route) => self.backends.counts((route, addr)).failures += 1,
            Note::Rejected(r) => self.counters.count_reject(r),
            Note::Full if self.refusing_for_memory => self.counters.rejected_memory += 1,
            Note::Full => self.counters.rejected_full += 1,
            Note::SlotReleased => self.total.release(),
            Note::Answered => self.counters.forwarded += 1,
            Note::Redirected => self.counters.redirects += 1,
            Note::Request {
                status,
                reused: _,
                retried,
                route,
            } => {
                self.counters.count_request(status);
                self.counters.retries += u64::from(retried);
                self.routes.count(route, status);
            }
            Note::RelayOpened {
                backend,
                route,
                handshake,
            } => {
                self.pool.used.relay_opened();
                self.counters.observe_handshake(handshake);
                self.counters.tunnels += 1;
                let id = backend.map_or(u16::MAX, |a| {
                    let id = self.backends.id((route, a));
                    let c = self.backends.counts((route, a));
                    c.active += 1;
                    c.tunnels += 1;
                    id
                });
                if let Some(Slot::Live(e)) = self.conns.get_mut(key) {
                    e.conn.set_backend_id(id);
                }
            }
        }
    }

    /// Closes connection `key`'s sockets and gives back what it held.
    pub(super) fn end(&mut self, key: usize, end: End, d: &mut impl Driver) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let Slot::Live(e) = std::mem::replace(slot, Slot::Dead) else {
            return;
        };
        d.close(key, Side::Client, e.client.into());
        if let Some(b) = e.backend {
            d.close(key, Side::Backend, b.into());
        }
        crate::driver::pool::detach(&mut self.backend_pool, key, self.time.now, d);
        if !self.tls.is_empty() {
            if let Some(ev) = self.tls.remove(&key).and_then(|mut s| s.final_event()) {
                self.counters.count_tls(ev);
            }
        }
        super::tls::drop_session(&mut self.backend_tls, &mut self.counters, key);
        self.dead.push(key);
        if end.holds_slot {
            self.total.release();
            self.pool
                .used
                .ended(matches!(end.reason, EndReason::Relay(_)));
        }
        if let Some(ip) = end.counted_ip {
            self.limiter.release(ip);
        }
        self.backends.closed(end.backend_id);
        if let EndReason::Relay(r) = end.reason {
            self.counters.count_close(r);
        }
        if let (Some(sink), Some(log)) = (&self.log, &end.log) {
            write_log(
                sink,
                &mut self.log_batch,
                log,
                self.time.now,
                end.reason.as_str(),
            );
        }
        if self.accept_paused_until.take().is_some() {
            // Descriptors were freed: try the backlog again.
            self.accept_wanted = true;
        }
    }

    // ---- after each batch of events ------------------------------------------------------

    /// Resumes yielded connections, fires timers, applies the accept pause, reaps closed
    /// connections and publishes counters. Returns true when the worker is done (drained).
    pub fn after_events(&mut self, d: &mut impl Driver) -> bool {
        for key in std::mem::take(&mut self.deferred) {
            self.ready(key, Event::Resume, d);
        }
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        let conns = &self.conns;
        self.wheel.expire_or_drop(
            self.time.tick,
            |k, due| fired.push((k, due)),
            |k, due| match conns.get(k as usize) {
                Some(Slot::Live(e)) => e.conn.armed() == Some(due),
                _ => false,
            },
        );
        for &(key, due) in &fired {
            self.ready(key as usize, Event::Timer(due), d);
        }
        self.fired = fired;
        if let Some(until) = self.accept_paused_until {
            if self.time.now >= until {
                self.accept_paused_until = None;
                self.accept_wanted = true;
            }
        }
        self.backend_pool.expire(self.time.now);
        if let Some(p) = &mut self.pressure {
            p.check(self.time.now);
        }
        if self.handing.is_some() {
            self.hand_over_ready(d);
        }
        self.reap();
        let done = self.drained(d);
        self.shrink_when_idle();
        // A loop that only moved bytes (thousands of wakes a second when busy) publishes its
        // counters (and hands its access log lines to the sink) at most every PUBLISH_EVERY,
        // and `timeout` wakes a quiet loop to publish what is left. A loop in which a
        // connection came, went or was refused publishes at once: a scrape right after sees it.
        // Which backends and routes exist (and their active counts) change with handshakes,
        // not bytes: they go out every loop, so a scrape always lists them.
        self.backends.publish();
        self.routes.publish();
        if done || self.changed || at_or_before(self.publish_due, self.time.tick) {
            self.publish();
            self.publish_due = self.time.tick.wrapping_add(PUBLISH_EVERY);
            self.unpublished = false;
            self.changed = false;
        } else {
            self.unpublished = true;
        }
        done
    }

    /// Frees the keys of connections closed during this batch.
    fn reap(&mut self) {
        for k in self.dead.drain(..) {
            self.conns.try_remove(k);
        }
    }

    /// While draining: true once nothing is left or the drain time is over (then everything
    /// left is ended).
    fn drained(&mut self, d: &mut impl Driver) -> bool {
        let Some(until) = self.draining else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        if self.time.now < until {
            return false;
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.ready(k, Event::Drain, d);
        }
        self.reap();
        self.publish();
        true
    }

    /// After a burst, once this worker holds no connection at all, gives back what the burst
    /// grew: slab capacity, wheel slots, pooled pipes and free heap pages. An embedded box that
    /// saw 10,000 clients at 9 am should not keep their memory all day.
    #[inline]
    fn shrink_when_idle(&mut self) {
        self.peak = self.peak.max(self.conns.len());
        if self.conns.is_empty() && self.peak >= SHRINK_AFTER {
            self.shrink();
        }
    }

    #[cold]
    fn shrink(&mut self) {
        self.peak = 0;
        self.conns.shrink_to_fit();
        self.tls.shrink_to_fit();
        self.tls_bufs = None;
        self.backend_tls.shrink_to_fit();
        self.wheel.shrink_to_fit();
        self.deferred.shrink_to_fit();
        self.pool.pipes.release_idle();
        crate::sys::mem::release_free_memory();
    }

    fn publish(&mut self) {
        if let Some(sink) = &self.log {
            self.counters.access_log_dropped += sink.flush(&mut self.log_batch);
        }
        self.counters.connections = self.conns.len() as u64;
        self.counters.relay = self.relay_stats;
        self.counters.pipes = self.pool.pipes.stats();
        self.counters.memory_reserved = self.pool.reserved();
        self.counters.pool_idle = self.backend_pool.len() as u64;
        self.published.store(&self.counters);
    }
}

/// Formats a connection's access log line into the worker's batch.
pub(super) fn write_log(
    sink: &LogSink,
    batch: &mut String,
    log: &ConnLog,
    now: Instant,
    reason: &str,
) {
    sink.format(
        batch,
        &Record {
            client: log.client,
            route: log.route_prefix(),
            backend: log.backend,
            status: log.status,
            bytes_up: log.up,
            bytes_down: log.down,
            duration: now.saturating_duration_since(log.started),
            reason,
        },
    );
}
