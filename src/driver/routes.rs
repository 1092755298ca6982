//! Per-route request counts of one worker, published to the admin thread when they change
//! (like [`super::backends`]). Routes are known by their stable id, so a connection accepted
//! under the configuration before a reload still counts under its route's name.

use crate::core::route::RouteTable;
use crate::driver::stats::{status_class, RouteSnapshot};

/// One worker's request counts per route.
pub struct RouteCounts {
    /// (route id, label, counts by status class)
    counts: Vec<(u32, String, [u64; 6])>,
    published: RouteSnapshot,
    dirty: bool,
}

impl RouteCounts {
    pub fn new(published: RouteSnapshot) -> RouteCounts {
        RouteCounts {
            counts: Vec::new(),
            published,
            dirty: false,
        }
    }

    /// Lists every route of `routes` (at zero until its first request), so that `/metrics`
    /// shows each configured route from the start.
    pub fn know(&mut self, routes: &RouteTable) {
        for r in routes.iter() {
            if !self.counts.iter().any(|(id, _, _)| *id == r.id) {
                self.counts.push((r.id, r.label.clone(), [0; 6]));
                self.dirty = true;
            }
        }
    }

    /// Counts a request of route `id` answered with `status`.
    pub fn count(&mut self, id: u32, status: u16) {
        self.dirty = true;
        let class = status_class(status);
        match self.counts.iter_mut().find(|(i, _, _)| *i == id) {
            Some((_, _, c)) => c[class] += 1,
            // A route no configuration this worker saw names: rare (a hash collision of two
            // labels would merge them, which `know` keeps from being silent).
            None => {
                let mut c = [0; 6];
                c[class] = 1;
                self.counts.push((id, format!("#{id:08x}"), c));
            }
        }
    }

    /// Copies the counts for the admin thread when something changed.
    pub fn publish(&mut self) {
        if self.dirty {
            self.dirty = false;
            if let Ok(mut p) = self.published.lock() {
                p.clear();
                p.extend(self.counts.iter().map(|(_, l, c)| (l.clone(), *c)));
            }
        }
    }
}
