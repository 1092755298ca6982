//! Counts the worker processes keep in the shared map beside the connection limits: forwarded
//! requests per route (each worker its own rows, summed by the supervisor for `/metrics` and
//! the status page) and `least_conn` loads per (route, backend) slot (one total every worker
//! reads when it picks, and each worker's share, taken back when it dies).
//!
//! ```text
//!   routes  per worker: rows, then ROUTE_ROWS rows of (route id, counts by status class)
//!   loads   LOAD_SLOTS totals, then LOAD_SLOTS per worker (its share of each total)
//! ```
//!
//! A worker is the only writer of its rows and of its share, so it stores plain values (one
//! relaxed store per request or lease); a total changes by atomic add. Taking a lease adds to
//! the total before the share and dropping one takes from the share first, so a total is never
//! below the live workers' shares and reclaiming a dead worker's share cannot underflow it.

use super::{Layout, Shared, PAGE_WORDS};
use crate::core::health::HEALTH_SLOTS;
use crate::core::route::LoadWords;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Routes each worker can count requests for in the shared map; requests of routes a worker
/// lists after these (thousands of routes, or many reloads adding new ones) count in its own
/// process only and are missing from `/metrics`.
pub const ROUTE_ROWS: usize = 1024;
/// Words per route row: the route id, then one count per status class.
const ROW: usize = 7;
pub(super) const ROUTES_STRIDE: usize = (1 + ROUTE_ROWS * ROW).next_multiple_of(PAGE_WORDS);
/// (route, backend) slots of the `least_conn` loads (as many as the health table's).
pub(super) const LOAD_SLOTS: usize = HEALTH_SLOTS;

impl Layout {
    fn route_row(&self, worker: usize, row: usize) -> usize {
        self.routes(worker) + 1 + row * ROW
    }
}

impl Shared {
    /// Starts row `row` of `worker`'s route counts for route `id`, at zero (worker process; rows
    /// are added in order). False past [`ROUTE_ROWS`].
    pub fn route_row(&self, worker: usize, row: usize, id: u32) -> bool {
        let len = self.w(self.layout.routes(worker));
        if row >= ROUTE_ROWS || row as u64 != len.load(Ordering::Relaxed) {
            return false;
        }
        let base = self.layout.route_row(worker, row);
        self.w(base).store(u64::from(id), Ordering::Relaxed);
        for c in 1..ROW {
            self.w(base + c).store(0, Ordering::Relaxed);
        }
        len.store(row as u64 + 1, Ordering::Release);
        true
    }

    /// Sets `worker`'s count of row `row`, status class `class`, to `n` (worker process).
    pub fn route_count(&self, worker: usize, row: usize, class: usize, n: u64) {
        if row < ROUTE_ROWS && class < ROW - 1 {
            let at = self.layout.route_row(worker, row) + 1 + class;
            self.w(at).store(n, Ordering::Relaxed);
        }
    }

    /// `worker`'s request counts by route id.
    pub fn routes(&self, worker: usize) -> Vec<(u32, [u64; 6])> {
        let len = self.w(self.layout.routes(worker)).load(Ordering::Acquire) as usize;
        (0..len.min(ROUTE_ROWS))
            .map(|row| {
                let base = self.layout.route_row(worker, row);
                let v = |j: usize| self.w(base + j).load(Ordering::Relaxed);
                (v(0) as u32, [v(1), v(2), v(3), v(4), v(5), v(6)])
            })
            .collect()
    }

    /// Empties `worker`'s route rows (its process is gone; supervisor, before a replacement).
    pub fn clear_routes(&self, worker: usize) {
        self.w(self.layout.routes(worker))
            .store(0, Ordering::Release);
    }

    fn load_word(&self, worker: Option<usize>, slot: usize) -> &AtomicU64 {
        self.w(self.layout.loads(worker) + slot)
    }

    /// Takes dead `worker`'s share out of every load total (supervisor, in `reclaim`).
    pub(super) fn reclaim_loads(&self, worker: usize) {
        for slot in 0..LOAD_SLOTS {
            let mine = self.load_word(Some(worker), slot);
            let n = mine.load(Ordering::Relaxed);
            if n != 0 {
                mine.store(0, Ordering::Relaxed);
                self.load_word(None, slot).fetch_sub(n, Ordering::Relaxed);
            }
        }
    }
}

/// The shared `least_conn` loads as one worker process counts them.
#[derive(Debug)]
pub struct WorkerLoad {
    pub shared: Arc<Shared>,
    pub worker: usize,
}

impl LoadWords for WorkerLoad {
    fn load_slots(&self) -> usize {
        LOAD_SLOTS
    }

    fn load(&self, slot: usize) -> u64 {
        if slot >= LOAD_SLOTS {
            return 0;
        }
        self.shared.load_word(None, slot).load(Ordering::Relaxed)
    }

    fn add_load(&self, slot: usize, up: bool) {
        if slot >= LOAD_SLOTS {
            return;
        }
        let total = self.shared.load_word(None, slot);
        let mine = self.shared.load_word(Some(self.worker), slot);
        let n = mine.load(Ordering::Relaxed);
        if up {
            total.fetch_add(1, Ordering::Relaxed);
            mine.store(n + 1, Ordering::Relaxed);
        } else if n > 0 {
            mine.store(n - 1, Ordering::Relaxed);
            total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::two;
    use super::*;
    use crate::config::{Balance, Route};
    use crate::core::route::RouteTable;

    #[test]
    fn route_rows_are_per_worker_and_cleared_for_a_replacement() {
        let (sup, w) = two();
        assert!(w.route_row(1, 0, 7) && w.route_row(1, 1, 9));
        assert!(!w.route_row(1, 3, 11), "rows are added in order");
        w.route_count(1, 0, 1, 5);
        w.route_count(1, 1, 4, 2);
        assert_eq!(
            sup.routes(1),
            [(7, [0, 5, 0, 0, 0, 0]), (9, [0, 0, 0, 0, 2, 0])]
        );
        assert!(sup.routes(0).is_empty());
        sup.clear_routes(1);
        assert!(sup.routes(1).is_empty());
        assert!(w.route_row(1, 0, 9));
        assert_eq!(sup.routes(1), [(9, [0; 6])], "a reused row starts at zero");
    }

    #[test]
    fn least_conn_sees_every_workers_leases_and_a_dead_workers_are_taken_back() {
        let (sup, w) = two();
        let w = Arc::new(w);
        let route = Route {
            backends: vec![
                "127.0.0.1:1".parse().expect("addr"),
                "127.0.0.1:2".parse().expect("addr"),
            ],
            options: crate::config::RouteOptions {
                balance: Balance::LeastConn,
                ..Default::default()
            },
            ..crate::core::route::test_route("/", &[])
        };
        let table = |worker: usize| {
            RouteTable::new(std::slice::from_ref(&route)).with_shared_load(Arc::new(WorkerLoad {
                shared: w.clone(),
                worker,
            }))
        };
        let (t0, t1) = (table(0), table(1));
        // Worker 0 holds two connections to backend 0: worker 1 sees them.
        t0.get(0).add_load(0, true);
        t0.get(0).add_load(0, true);
        t1.get(0).add_load(1, true);
        assert_eq!((t1.get(0).load_of(0), t1.get(0).load_of(1)), (2, 1));
        t1.get(0).add_load(1, false);
        assert_eq!(t0.get(0).load_of(1), 0);
        // Worker 0 dies holding them: the supervisor takes its share back.
        t1.get(0).add_load(0, true);
        assert_eq!(t1.get(0).load_of(0), 3);
        sup.reclaim(0);
        assert_eq!((t1.get(0).load_of(0), t1.get(0).load_of(1)), (1, 0));
        t1.get(0).add_load(0, false);
        assert_eq!(t1.get(0).load_of(0), 0);
    }
}
