//! Per-backend counts of one worker: (route, backend address) pairs interned to small ids (a
//! relay keeps two bytes, not a socket address and a route), published to the admin thread when
//! they change. A backend two routes share is counted once per route; `/metrics` sums them.
//!
//! A row lives while its backend is in the worker's route table or has tunnels open: a row
//! whose backend left the table (DNS, reload) is dropped once its last tunnel closes, and its
//! id is reused. So a cluster whose backend pods come and go for months keeps as many rows as
//! it has backends now, not every address it ever used. The admin side keeps the counters it
//! showed from going down while workers drop their rows one by one
//! ([`crate::driver::stats::BackendTotals`]).

use std::collections::{HashMap, HashSet};

use crate::core::route::RouteTable;
use crate::driver::stats::{BackendCounts, BackendKey, BackendSnapshot};

/// One worker's per-backend counts.
pub struct BackendTable {
    /// By id; `None`: a dropped row, its id in `free`.
    rows: Vec<Option<(BackendKey, BackendCounts)>>,
    index: HashMap<BackendKey, u16>,
    free: Vec<u16>,
    /// The (route, backend) pairs of the worker's route table now.
    current: HashSet<BackendKey>,
    published: BackendSnapshot,
    dirty: bool,
}

impl BackendTable {
    pub fn new(published: BackendSnapshot) -> BackendTable {
        BackendTable {
            rows: Vec::new(),
            index: HashMap::new(),
            free: Vec::new(),
            current: HashSet::new(),
            published,
            dirty: false,
        }
    }

    /// The worker's route table changed (start, reload, new DNS answers): rows of backends
    /// that left it and have no tunnel open are dropped.
    pub fn set_routes(&mut self, routes: &RouteTable) {
        self.current = routes
            .iter()
            .flat_map(|r| r.backends.iter().map(move |a| (r.id, *a)))
            .collect();
        for id in 0..self.rows.len() {
            self.drop_if_gone(id as u16);
        }
    }

    /// The worker-local id of a backend of a route (interned; stable while its row lives, that
    /// is while the backend is in the route table or a tunnel to it is open).
    pub fn id(&mut self, key: BackendKey) -> u16 {
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => id,
            // u16::MAX means "no backend": more distinct backends than that share the last slot.
            None if self.rows.len() >= u16::MAX as usize - 1 => {
                return (self.rows.len() - 1) as u16
            }
            None => {
                self.rows.push(None);
                (self.rows.len() - 1) as u16
            }
        };
        self.rows[id as usize] = Some((key, BackendCounts::default()));
        self.index.insert(key, id);
        self.dirty = true;
        id
    }

    /// The (route, address) of backend `id`, if it has one.
    pub fn key(&self, id: u16) -> Option<BackendKey> {
        self.rows.get(id as usize)?.as_ref().map(|(k, _)| *k)
    }

    pub fn counts(&mut self, key: BackendKey) -> &mut BackendCounts {
        self.dirty = true;
        let id = self.id(key) as usize;
        // `id` made or found this row (a full table's last, shared slot included).
        &mut self.rows[id]
            .get_or_insert((key, BackendCounts::default()))
            .1
    }

    /// A relay to backend `id` ended (`u16::MAX`: it had none).
    pub fn closed(&mut self, id: u16) {
        if let Some(Some((_, c))) = self.rows.get_mut(id as usize) {
            c.active = c.active.saturating_sub(1);
            self.dirty = true;
            self.drop_if_gone(id);
        }
    }

    /// Drops row `id` if its backend left the route table and no tunnel to it is open.
    fn drop_if_gone(&mut self, id: u16) {
        let Some(Some((key, c))) = self.rows.get(id as usize) else {
            return;
        };
        if c.active == 0 && !self.current.contains(key) {
            self.index.remove(key);
            self.rows[id as usize] = None;
            self.free.push(id);
            self.dirty = true;
        }
    }

    /// Rows alive now (tests).
    #[cfg(test)]
    fn live(&self) -> Vec<(BackendKey, BackendCounts)> {
        self.rows.iter().flatten().copied().collect()
    }

    /// Copies the counts for the admin thread, only when something changed (a worker with
    /// nothing to do sleeps without a timeout, so a timed refresh would leave the last change
    /// unpublished). An uncontended lock and a copy of a few entries, at most once per loop.
    #[inline]
    pub fn publish(&mut self) {
        if self.dirty {
            self.dirty = false;
            if let Ok(mut p) = self.published.lock() {
                p.clear();
                p.extend(self.rows.iter().flatten().copied());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::route::test_route;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 9000))
    }

    fn table(backends: &[SocketAddr]) -> RouteTable {
        let names: Vec<String> = backends.iter().map(SocketAddr::to_string).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        RouteTable::new(&[test_route("/app", &names)])
    }

    #[test]
    fn rows_of_backends_gone_from_the_routes_go_once_their_tunnels_close() {
        let snap: BackendSnapshot = Arc::new(Mutex::new(Vec::new()));
        let mut t = BackendTable::new(snap.clone());
        let routes = table(&[addr(2), addr(3)]);
        let route = routes.iter().next().expect("a route").id;
        t.set_routes(&routes);
        let (a, b) = (t.id((route, addr(2))), t.id((route, addr(3))));
        t.counts((route, addr(2))).active += 1;
        t.counts((route, addr(2))).tunnels += 1;
        t.counts((route, addr(3))).failures += 1;
        // Both leave the table: the idle one's row goes at once, the other's stays while its
        // tunnel is open.
        t.set_routes(&table(&[addr(4)]));
        assert_eq!(t.key(b), None);
        assert_eq!(t.key(a), Some((route, addr(2))));
        t.publish();
        assert_eq!(snap.lock().expect("snapshot").len(), 1);
        t.closed(a);
        assert_eq!(t.live(), vec![]);
        t.publish();
        assert!(snap.lock().expect("snapshot").is_empty());
        // Ids are reused: a thousand addresses coming and going keep two rows.
        for i in 0..1000u32 {
            let k = (
                route,
                SocketAddr::from(([10, 0, (i / 256) as u8, i as u8], 80)),
            );
            let id = t.id(k);
            t.counts(k).active += 1;
            t.set_routes(&table(&[addr(4)]));
            t.closed(id);
        }
        assert_eq!(t.rows.len(), 2);
        assert!(t.live().is_empty());
        // A backend in the table keeps its row idle.
        let c = t.id((route, addr(4)));
        t.counts((route, addr(4))).tunnels += 1;
        t.set_routes(&table(&[addr(4)]));
        assert_eq!(t.key(c), Some((route, addr(4))));
        assert_eq!(t.live()[0].1.tunnels, 1);
    }
}
