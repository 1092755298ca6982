//! What worker processes share: one memfd mapping ([`crate::sys::shm`]) laid out as words.
//!
//! ```text
//!   header   magic, sizes, hash seed, lock, max_connections, connections, per-IP limit, IPs
//!   slots    per worker: its connection count, its journal, its backend-mirror sequence
//!   cursors  one round-robin cursor per route, so all workers' choices make one rotation
//!   counters per worker: a stats::Published block (the worker stores, the supervisor sums)
//!   backends per worker: a seqlocked copy of its per-backend counts (mirrored on request)
//!   ip table global: IP -> connections counted, for the per-IP limit across workers
//!   ip table per worker: IP -> connections this worker counted
//!   health   per (route, backend): state word and failure count (core::health)
//!   routes   per worker: its forwarded-request counts per route id (counts.rs)
//!   loads    per (route, backend): open connections of all workers, then each worker's share
//!            (least_conn; counts.rs)
//! ```
//!
//! Connection and per-IP counts change only under one lock word, taken once when a connection
//! is accepted and once when it ends (never per byte). Every count is also attributed to the
//! worker that made it, so when a worker process dies (even inside the lock: the supervisor
//! takes the lock over from a dead owner) the supervisor recomputes the totals from the live
//! workers' own counts: a crash leaks no slot of `max_connections` or of any IP's budget.

mod counts;
mod table;

pub use counts::{WorkerLoad, ROUTE_ROWS};

use crate::core::health::HEALTH_WORDS;
use crate::driver::stats::{BackendCounts, BackendKey, Published, PUBLISHED_WORDS};
use crate::sys::shm::{Cells, SharedMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use table::{Probe, Table};

const MAGIC: u64 = u64::from_le_bytes(*b"wsplice\x01");
const H_MAGIC: usize = 0;
const H_WORKERS: usize = 1;
const H_GLOBAL_SLOTS: usize = 2;
const H_LOCAL_SLOTS: usize = 3;
const H_BACKEND_SLOTS: usize = 4;
const H_PUB_WORDS: usize = 5;
const H_SEED: usize = 6;
const H_LOCK: usize = 7;
const H_MAX: usize = 8;
const H_ACTIVE: usize = 9;
const H_IP_LIMIT: usize = 10;
const H_TRACKED: usize = 11;
/// Four words: the 32 bytes TLS session ticket keys derive from, the same in every worker.
const H_TICKET_KEY: usize = 12;
const HEADER: usize = 16;

const S_ACTIVE: usize = 0;
const S_JOURNAL_HI: usize = 1;
const S_JOURNAL_LO: usize = 2;
const S_JOURNAL_SET: usize = 3;
const S_BK_SEQ: usize = 4;
const S_BK_LEN: usize = 5;
const S_BK_WANT: usize = 6;
const S_BK_HAVE: usize = 7;
const SLOT: usize = 8;

/// Words per backend entry: address (3; the route id in the upper half of the third), active,
/// tunnels, failures.
const BK_ENTRY: usize = 6;
/// Words per IP table entry: address (2), count.
const IP_ENTRY: usize = 3;
const PAGE_WORDS: usize = 512;

/// Per-backend entries each worker can mirror; more backends than this are left out of
/// `/metrics` (the supervisor says so at start-up).
pub const BACKEND_SLOTS: usize = 1024;

/// Round-robin cursors (routes beyond this share them, modulo).
const CURSORS: usize = 4096;

/// The lock owner word of the supervisor (workers use their id + 1).
const SUPERVISOR: u64 = u64::MAX;

/// Sizes the mapping is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub workers: usize,
    /// Slots of the global IP table (a power of two, at least twice the connections possible).
    pub global_slots: usize,
    /// Slots of each worker's IP table.
    pub local_slots: usize,
    pub backend_slots: usize,
}

impl Layout {
    /// Room for `workers` processes of at most `per_worker` connections each.
    pub fn new(workers: usize, per_worker: usize) -> Layout {
        let local = (2 * per_worker.max(32)).next_power_of_two();
        Layout {
            workers,
            global_slots: (workers.max(1) * local).next_power_of_two(),
            local_slots: local,
            backend_slots: BACKEND_SLOTS,
        }
    }

    fn slot(&self, w: usize) -> usize {
        HEADER + w * SLOT
    }
    fn cursors(&self) -> usize {
        HEADER + self.workers * SLOT
    }
    fn published(&self, w: usize) -> usize {
        self.cursors() + CURSORS + w * PUBLISHED_WORDS
    }
    fn backends(&self, w: usize) -> usize {
        self.published(self.workers) + w * self.backend_slots * BK_ENTRY
    }
    fn global(&self) -> usize {
        self.backends(self.workers).next_multiple_of(PAGE_WORDS)
    }
    fn local_stride(&self) -> usize {
        (self.local_slots * IP_ENTRY).next_multiple_of(PAGE_WORDS)
    }
    fn local(&self, w: usize) -> usize {
        (self.global() + self.global_slots * IP_ENTRY).next_multiple_of(PAGE_WORDS)
            + w * self.local_stride()
    }
    /// The backend health table ([`crate::core::health`]), after everything else.
    fn health(&self) -> usize {
        self.local(self.workers)
    }
    /// Worker `w`'s per-route request counts ([`counts`]).
    fn routes(&self, w: usize) -> usize {
        (self.health() + HEALTH_WORDS).next_multiple_of(PAGE_WORDS) + w * counts::ROUTES_STRIDE
    }
    /// The `least_conn` loads: all workers' per slot, then worker `w`'s (`Some(w)`).
    fn loads(&self, w: Option<usize>) -> usize {
        self.routes(self.workers) + w.map_or(0, |w| w + 1) * counts::LOAD_SLOTS
    }
    /// Words the whole mapping takes (pages that are never touched cost no memory).
    pub fn words(&self) -> usize {
        self.loads(Some(self.workers))
    }
}

/// The shared state, as one process maps it.
pub struct Shared {
    map: Arc<SharedMap>,
    layout: Layout,
    seed: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("layout", &self.layout)
            .finish()
    }
}

/// The lock, released on drop.
struct Guard<'a>(&'a AtomicU64);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

fn ip_key(ip: IpAddr) -> (u64, u64) {
    let o = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&o[..8]);
    lo.copy_from_slice(&o[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

fn addr_words(a: SocketAddr) -> [u64; 3] {
    let (hi, lo) = ip_key(a.ip());
    [hi, lo, u64::from(a.port()) | (u64::from(a.is_ipv6()) << 16)]
}

fn words_addr(w: [u64; 3]) -> SocketAddr {
    let mut o = [0u8; 16];
    o[..8].copy_from_slice(&w[0].to_be_bytes());
    o[8..].copy_from_slice(&w[1].to_be_bytes());
    let v6 = std::net::Ipv6Addr::from(o);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) if (w[2] >> 16) & 1 == 0 => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, (w[2] & 0xffff) as u16)
}

impl crate::core::route::SharedWords for Shared {
    fn word(&self, i: usize) -> &AtomicU64 {
        self.w(self.layout.cursors() + i % CURSORS)
    }
}

impl crate::core::health::HealthWords for Shared {
    fn health_word(&self, i: usize) -> Option<&AtomicU64> {
        (i < HEALTH_WORDS).then(|| self.w(self.layout.health() + i))
    }
}

/// What reclaiming a dead worker's counts gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    pub connections: u64,
    pub ips: u64,
    /// The worker died holding the lock (in the middle of counting a connection).
    pub held_lock: bool,
}

impl Shared {
    /// Creates the mapping for `layout` (supervisor).
    pub fn create(layout: Layout) -> io::Result<Shared> {
        let map = SharedMap::create("wsplice-shared", layout.words())?;
        let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        let w = map.words();
        for (i, v) in [
            (H_WORKERS, layout.workers as u64),
            (H_GLOBAL_SLOTS, layout.global_slots as u64),
            (H_LOCAL_SLOTS, layout.local_slots as u64),
            (H_BACKEND_SLOTS, layout.backend_slots as u64),
            (H_PUB_WORDS, PUBLISHED_WORDS as u64),
            (H_SEED, seed),
            (H_MAGIC, MAGIC),
        ] {
            w[i].store(v, Ordering::Release);
        }
        Ok(Shared {
            map: Arc::new(map),
            layout,
            seed,
        })
    }

    /// Maps what the supervisor created (worker process); refuses a mapping laid out by
    /// another build.
    pub fn attach(map: SharedMap) -> io::Result<Shared> {
        let w = map.words();
        let get = |i: usize| w.get(i).map_or(0, |v| v.load(Ordering::Acquire)) as usize;
        if w.len() < HEADER || get(H_MAGIC) as u64 != MAGIC || get(H_PUB_WORDS) != PUBLISHED_WORDS {
            return Err(io::Error::other(
                "the shared memory from the supervisor has another layout (a different wsplice build?)",
            ));
        }
        let layout = Layout {
            workers: get(H_WORKERS),
            global_slots: get(H_GLOBAL_SLOTS),
            local_slots: get(H_LOCAL_SLOTS),
            backend_slots: get(H_BACKEND_SLOTS),
        };
        let ok = layout.global_slots.is_power_of_two()
            && layout.local_slots.is_power_of_two()
            && layout.words() <= w.len();
        if !ok {
            return Err(io::Error::other(
                "the shared memory from the supervisor is too small",
            ));
        }
        let seed = get(H_SEED) as u64;
        Ok(Shared {
            map: Arc::new(map),
            layout,
            seed,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Stores the TLS ticket key bytes every worker derives its ticket keys from (supervisor,
    /// before any worker starts): a client resumes on whichever worker it reaches.
    pub fn set_ticket_key(&self, key: [u8; 32]) {
        let w = self.map.words();
        for (i, chunk) in key.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w[H_TICKET_KEY + i].store(u64::from_le_bytes(b), Ordering::Release);
        }
    }

    /// The ticket key bytes the supervisor stored.
    pub fn ticket_key(&self) -> [u8; 32] {
        let w = self.map.words();
        let mut key = [0u8; 32];
        for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&w[H_TICKET_KEY + i].load(Ordering::Acquire).to_le_bytes());
        }
        key
    }

    /// The memfd, to hand to a worker process.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.map.fd()
    }

    fn w(&self, i: usize) -> &AtomicU64 {
        &self.map.words()[i]
    }

    fn slot(&self, worker: usize, field: usize) -> &AtomicU64 {
        self.w(self.layout.slot(worker) + field)
    }

    fn table(&self, start: usize, slots: usize) -> Table<'_> {
        Table {
            w: &self.map.words()[start..start + slots * IP_ENTRY],
            mask: slots - 1,
            seed: self.seed,
        }
    }

    fn global(&self) -> Table<'_> {
        self.table(self.layout.global(), self.layout.global_slots)
    }

    fn local(&self, worker: usize) -> Table<'_> {
        self.table(self.layout.local(worker), self.layout.local_slots)
    }

    fn lock(&self, owner: u64) -> Guard<'_> {
        let word = self.w(H_LOCK);
        let mut spins = 0u32;
        while word
            .compare_exchange_weak(0, owner, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Held for a few dozen instructions at most; yield if its holder was preempted.
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Guard(word)
    }

    /// `max_connections` for all workers together.
    pub fn set_max_connections(&self, max: usize) {
        self.w(H_MAX).store(max as u64, Ordering::Relaxed);
    }

    /// `max_connections_per_ip`; `None` (0) = unlimited.
    pub fn set_ip_limit(&self, limit: Option<usize>) {
        self.w(H_IP_LIMIT)
            .store(limit.unwrap_or(0) as u64, Ordering::Relaxed);
    }

    /// Counts a connection for `worker`, or refuses it at `max_connections`.
    pub fn conn_acquire(&self, worker: usize) -> bool {
        let _g = self.lock(worker as u64 + 1);
        let active = self.w(H_ACTIVE).load(Ordering::Relaxed);
        if active >= self.w(H_MAX).load(Ordering::Relaxed) {
            return false;
        }
        self.w(H_ACTIVE).store(active + 1, Ordering::Relaxed);
        let mine = self.slot(worker, S_ACTIVE);
        mine.store(mine.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        true
    }

    pub fn conn_release(&self, worker: usize) {
        let _g = self.lock(worker as u64 + 1);
        let all = self.w(H_ACTIVE);
        all.store(
            all.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
        let mine = self.slot(worker, S_ACTIVE);
        mine.store(
            mine.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }

    /// Connections counted by all workers.
    pub fn connections(&self) -> u64 {
        self.w(H_ACTIVE).load(Ordering::Relaxed)
    }

    /// Connections counted by one worker.
    pub fn worker_connections(&self, worker: usize) -> u64 {
        self.slot(worker, S_ACTIVE).load(Ordering::Relaxed)
    }

    fn journal(&self, worker: usize, k: Option<(u64, u64)>) {
        if let Some(k) = k {
            self.slot(worker, S_JOURNAL_HI)
                .store(k.0, Ordering::Relaxed);
            self.slot(worker, S_JOURNAL_LO)
                .store(k.1, Ordering::Relaxed);
        }
        self.slot(worker, S_JOURNAL_SET)
            .store(u64::from(k.is_some()), Ordering::Relaxed);
    }

    /// The per-IP limit for `worker`: `None` no limit in force (nothing counted), `Some(false)`
    /// over the limit (nothing counted), `Some(true)` counted.
    pub fn ip_acquire(&self, worker: usize, ip: IpAddr) -> Option<bool> {
        let limit = self.w(H_IP_LIMIT).load(Ordering::Relaxed);
        if limit == 0 {
            return None;
        }
        let k = ip_key(ip);
        let _g = self.lock(worker as u64 + 1);
        let (global, local) = (self.global(), self.local(worker));
        let (gi, new) = match global.find(k) {
            Probe::Found(i) if global.count(i) >= limit => return Some(false),
            Probe::Found(i) => (i, false),
            Probe::Vacant(i) => (i, true),
            // Sized for twice the connections the descriptors allow: cannot fill up.
            Probe::Full => return Some(false),
        };
        self.journal(worker, Some(k));
        if !local.add(k, 1) {
            self.journal(worker, None);
            return Some(false);
        }
        global.set(gi, k, global.count(gi) + 1);
        if new {
            self.w(H_TRACKED).fetch_add(1, Ordering::Relaxed);
        }
        self.journal(worker, None);
        Some(true)
    }

    /// Forgets one connection `worker` counted for `ip`.
    pub fn ip_release(&self, worker: usize, ip: IpAddr) {
        let k = ip_key(ip);
        let _g = self.lock(worker as u64 + 1);
        self.journal(worker, Some(k));
        let (global, local) = (self.global(), self.local(worker));
        if local.get(k) > 0 {
            local.add(k, -1);
            if let Probe::Found(g) = global.find(k) {
                if global.count(g) <= 1 {
                    global.remove(g);
                    self.w(H_TRACKED).fetch_sub(1, Ordering::Relaxed);
                } else {
                    global.set(g, k, global.count(g) - 1);
                }
            }
        }
        self.journal(worker, None);
    }

    /// Distinct client IPs counted now.
    pub fn tracked_ips(&self) -> usize {
        self.w(H_TRACKED).load(Ordering::Relaxed) as usize
    }

    /// After `dead`'s process ended: forgets its connections and IP counts, recomputing the
    /// totals from the live workers' own counts (exact even if it died holding the lock).
    /// Supervisor only, before a replacement starts.
    pub fn reclaim(&self, dead: usize) -> Reclaimed {
        let word = self.w(H_LOCK);
        let mut held_lock = false;
        loop {
            if word
                .compare_exchange(0, SUPERVISOR, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
            if word
                .compare_exchange(
                    dead as u64 + 1,
                    SUPERVISOR,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                held_lock = true;
                break;
            }
            std::thread::yield_now();
        }
        let _g = Guard(word);
        let live: u64 = (0..self.layout.workers)
            .filter(|&v| v != dead)
            .map(|v| self.worker_connections(v))
            .sum();
        let before = self.w(H_ACTIVE).swap(live, Ordering::Relaxed);
        self.slot(dead, S_ACTIVE).store(0, Ordering::Relaxed);

        let local = self.local(dead);
        let mut keys: Vec<(u64, u64)> = (0..self.layout.local_slots)
            .filter(|&i| local.count(i) != 0)
            .map(|i| local.key(i))
            .collect();
        if self.slot(dead, S_JOURNAL_SET).load(Ordering::Relaxed) != 0 {
            keys.push((
                self.slot(dead, S_JOURNAL_HI).load(Ordering::Relaxed),
                self.slot(dead, S_JOURNAL_LO).load(Ordering::Relaxed),
            ));
        }
        self.map
            .zero(self.layout.local(dead), self.layout.local_stride());
        self.reclaim_loads(dead);
        self.journal(dead, None);
        let global = self.global();
        let mut ips = 0;
        for k in keys {
            let want: u64 = (0..self.layout.workers)
                .filter(|&v| v != dead)
                .map(|v| self.local(v).get(k))
                .sum();
            match global.find(k) {
                Probe::Found(i) if want == 0 => {
                    global.remove(i);
                    self.w(H_TRACKED).fetch_sub(1, Ordering::Relaxed);
                    ips += 1;
                }
                Probe::Found(i) => {
                    ips += u64::from(global.count(i) != want);
                    global.set(i, k, want);
                }
                Probe::Vacant(i) if want > 0 => {
                    global.set(i, k, want);
                    self.w(H_TRACKED).fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        Reclaimed {
            connections: before.saturating_sub(live),
            ips,
            held_lock,
        }
    }

    /// `worker`'s counters block.
    pub fn published(&self, worker: usize) -> Published {
        let cells = Cells::mapped(
            self.map.clone(),
            self.layout.published(worker),
            PUBLISHED_WORDS,
        );
        // The layout was checked at attach/create time, so the block is inside the mapping.
        cells.and_then(Published::in_cells).unwrap_or_default()
    }

    /// Copies `worker`'s per-backend counts into its mirror (worker process); entries beyond
    /// [`Layout::backend_slots`] are left out. Answers a pending [`Shared::request_backends`].
    pub fn mirror_backends(&self, worker: usize, list: &[(BackendKey, BackendCounts)]) {
        let want = self.slot(worker, S_BK_WANT).load(Ordering::Acquire);
        let seq = self.slot(worker, S_BK_SEQ);
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        let base = self.layout.backends(worker);
        let n = list.len().min(self.layout.backend_slots);
        for (e, ((route, addr), c)) in list[..n].iter().enumerate() {
            let a = addr_words(*addr);
            let a2 = a[2] | u64::from(*route) << 32;
            let vals = [a[0], a[1], a2, c.active, c.tunnels, c.failures];
            for (j, v) in vals.into_iter().enumerate() {
                self.w(base + e * BK_ENTRY + j).store(v, Ordering::Relaxed);
            }
        }
        self.slot(worker, S_BK_LEN)
            .store(n as u64, Ordering::Relaxed);
        seq.store((s.wrapping_add(1) | 1).wrapping_add(1), Ordering::Release);
        self.slot(worker, S_BK_HAVE).store(want, Ordering::Release);
    }

    /// Asks for a fresh mirror of `worker`'s backends; returns the ticket to wait for.
    pub fn request_backends(&self, worker: usize) -> u64 {
        self.slot(worker, S_BK_WANT).fetch_add(1, Ordering::AcqRel) + 1
    }

    /// True once the mirror answers `ticket`.
    pub fn backends_answered(&self, worker: usize, ticket: u64) -> bool {
        self.slot(worker, S_BK_HAVE).load(Ordering::Acquire) >= ticket
    }

    /// `worker`'s mirrored per-backend counts.
    pub fn backends(&self, worker: usize) -> Vec<(BackendKey, BackendCounts)> {
        let seq = self.slot(worker, S_BK_SEQ);
        let base = self.layout.backends(worker);
        loop {
            let s1 = seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::thread::yield_now();
                continue;
            }
            let n = (self.slot(worker, S_BK_LEN).load(Ordering::Relaxed) as usize)
                .min(self.layout.backend_slots);
            let out: Vec<_> = (0..n)
                .map(|e| {
                    let v = |j: usize| self.w(base + e * BK_ENTRY + j).load(Ordering::Relaxed);
                    (
                        ((v(2) >> 32) as u32, words_addr([v(0), v(1), v(2)])),
                        BackendCounts {
                            active: v(3),
                            tunnels: v(4),
                            failures: v(5),
                        },
                    )
                })
                .collect();
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == s1 {
                return out;
            }
        }
    }

    /// Empties `worker`'s backend mirror (its process is gone).
    pub fn clear_backends(&self, worker: usize) {
        self.mirror_backends(worker, &[]);
    }
}

#[cfg(test)]
mod tests;
