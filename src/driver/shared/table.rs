//! The open-addressing tables in the shared map that count connections per client IP.

use super::*;

pub(super) enum Probe {
    Found(usize),
    Vacant(usize),
    Full,
}

/// One open-addressing table (linear probing, backward-shift deletion) of IP -> count.
pub(super) struct Table<'a> {
    pub(super) w: &'a [AtomicU64],
    pub(super) mask: usize,
    pub(super) seed: u64,
}

impl Table<'_> {
    pub(super) fn home(&self, k: (u64, u64)) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.seed, k).hash(&mut h);
        h.finish() as usize & self.mask
    }
    pub(super) fn key(&self, i: usize) -> (u64, u64) {
        (
            self.w[i * IP_ENTRY].load(Ordering::Relaxed),
            self.w[i * IP_ENTRY + 1].load(Ordering::Relaxed),
        )
    }
    pub(super) fn count(&self, i: usize) -> u64 {
        self.w[i * IP_ENTRY + 2].load(Ordering::Relaxed)
    }
    pub(super) fn set(&self, i: usize, k: (u64, u64), n: u64) {
        self.w[i * IP_ENTRY].store(k.0, Ordering::Relaxed);
        self.w[i * IP_ENTRY + 1].store(k.1, Ordering::Relaxed);
        self.w[i * IP_ENTRY + 2].store(n, Ordering::Relaxed);
    }
    pub(super) fn find(&self, k: (u64, u64)) -> Probe {
        let mut i = self.home(k);
        for _ in 0..=self.mask {
            if self.count(i) == 0 {
                return Probe::Vacant(i);
            }
            if self.key(i) == k {
                return Probe::Found(i);
            }
            i = (i + 1) & self.mask;
        }
        Probe::Full
    }
    pub(super) fn get(&self, k: (u64, u64)) -> u64 {
        match self.find(k) {
            Probe::Found(i) => self.count(i),
            _ => 0,
        }
    }
    /// Adds `delta` (may be negative) to `k`'s count; false if the table is full.
    pub(super) fn add(&self, k: (u64, u64), delta: i64) -> bool {
        match self.find(k) {
            Probe::Found(i) => {
                let n = self.count(i).saturating_add_signed(delta);
                if n == 0 {
                    self.remove(i);
                } else {
                    self.set(i, k, n);
                }
                true
            }
            Probe::Vacant(i) => {
                if delta > 0 {
                    self.set(i, k, delta as u64);
                }
                true
            }
            Probe::Full => false,
        }
    }
    /// Empties slot `i`, moving later entries of the same probe run back so none is orphaned.
    pub(super) fn remove(&self, mut i: usize) {
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            if self.count(j) == 0 {
                break;
            }
            let home = self.home(self.key(j));
            // Entry j may fill the hole at i only if its home is not cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.set(i, self.key(j), self.count(j));
                i = j;
            }
        }
        self.set(i, (0, 0), 0);
    }
}
