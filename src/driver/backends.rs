//! Per-backend counts of one worker: (route, backend address) pairs interned to small ids (a
//! relay keeps two bytes, not a socket address and a route), published to the admin thread when
//! they change. A backend two routes share is counted once per route; `/metrics` sums them.

use crate::driver::stats::{BackendCounts, BackendKey, BackendSnapshot};

/// One worker's per-backend counts.
pub struct BackendTable {
    counts: Vec<(BackendKey, BackendCounts)>,
    published: BackendSnapshot,
    dirty: bool,
}

impl BackendTable {
    pub fn new(published: BackendSnapshot) -> BackendTable {
        BackendTable {
            counts: Vec::new(),
            published,
            dirty: false,
        }
    }

    /// The worker-local id of a backend of a route (interned; stable for the worker's life).
    pub fn id(&mut self, key: BackendKey) -> u16 {
        match self.counts.iter().position(|(k, _)| *k == key) {
            Some(i) => i as u16,
            None => {
                // u16::MAX means "no backend": more distinct backends than that share the last slot.
                if self.counts.len() < u16::MAX as usize - 1 {
                    self.counts.push((key, BackendCounts::default()));
                }
                (self.counts.len() - 1) as u16
            }
        }
    }

    /// The (route, address) of backend `id`, if it has one.
    pub fn key(&self, id: u16) -> Option<BackendKey> {
        self.counts.get(id as usize).map(|(k, _)| *k)
    }

    pub fn counts(&mut self, key: BackendKey) -> &mut BackendCounts {
        self.dirty = true;
        let id = self.id(key) as usize;
        &mut self.counts[id].1
    }

    /// A relay to backend `id` ended (`u16::MAX`: it had none).
    pub fn closed(&mut self, id: u16) {
        if let Some((_, c)) = self.counts.get_mut(id as usize) {
            c.active -= 1;
            self.dirty = true;
        }
    }

    /// Copies the counts for the admin thread, only when something changed (a worker with
    /// nothing to do sleeps without a timeout, so a timed refresh would leave the last change
    /// unpublished). An uncontended lock and a copy of a few entries, at most once per loop.
    #[inline]
    pub fn publish(&mut self) {
        if self.dirty {
            self.dirty = false;
            if let Ok(mut p) = self.published.lock() {
                p.clone_from(&self.counts);
            }
        }
    }
}
