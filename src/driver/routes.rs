//! Per-route request counts of one worker. A worker thread publishes them to the admin thread
//! when they change (like [`super::backends`]); a worker process stores each count in the
//! shared map as it changes, where the supervisor sums every worker's rows. Routes are known by
//! their stable id, so a connection accepted under the configuration before a reload still
//! counts under its route's name.

use crate::core::route::RouteTable;
use crate::driver::shared::Shared;
use crate::driver::stats::{status_class, RouteSnapshot};
use std::sync::Arc;

/// Where a worker's per-route counts go.
pub enum RouteSink {
    /// Worker threads: a list the admin thread reads.
    Local(RouteSnapshot),
    /// Worker processes: worker `.1`'s rows in the shared map.
    Shared(Arc<Shared>, usize),
}

/// One worker's request counts per route.
pub struct RouteCounts {
    /// (route id, label, counts by status class), in the order of the shared rows
    counts: Vec<(u32, String, [u64; 6])>,
    sink: RouteSink,
    dirty: bool,
}

impl RouteCounts {
    pub fn new(sink: RouteSink) -> RouteCounts {
        RouteCounts {
            counts: Vec::new(),
            sink,
            dirty: false,
        }
    }

    /// Adds a row for route `id` (at zero).
    fn add(&mut self, id: u32, label: String) -> usize {
        let row = self.counts.len();
        self.counts.push((id, label, [0; 6]));
        if let RouteSink::Shared(shared, worker) = &self.sink {
            shared.route_row(*worker, row, id);
        }
        row
    }

    /// Lists every route of `routes` (at zero until its first request), so that `/metrics`
    /// shows each configured route from the start.
    pub fn know(&mut self, routes: &RouteTable) {
        for r in routes.iter() {
            if !self.counts.iter().any(|(id, _, _)| *id == r.id) {
                self.add(r.id, r.label.clone());
                self.dirty = true;
            }
        }
    }

    /// Counts a request of route `id` answered with `status`.
    pub fn count(&mut self, id: u32, status: u16) {
        self.dirty = true;
        let class = status_class(status);
        let row = match self.counts.iter().position(|(i, _, _)| *i == id) {
            Some(row) => row,
            // A route no configuration this worker saw names: rare (a hash collision of two
            // labels would merge them, which `know` keeps from being silent).
            None => self.add(id, format!("#{id:08x}")),
        };
        let c = &mut self.counts[row].2[class];
        *c += 1;
        if let RouteSink::Shared(shared, worker) = &self.sink {
            shared.route_count(*worker, row, class, *c);
        }
    }

    /// Copies the counts for the admin thread when something changed.
    #[inline]
    pub fn publish(&mut self) {
        if self.dirty {
            self.dirty = false;
            let RouteSink::Local(published) = &self.sink else {
                return;
            };
            if let Ok(mut p) = published.lock() {
                p.clear();
                p.extend(self.counts.iter().map(|(_, l, c)| (l.clone(), *c)));
            }
        }
    }
}
