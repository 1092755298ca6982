//! Routing: (host, path) -> route -> backend.
//!
//! Lookup walks the path's own `/`-boundaries from the longest to `/`, one hash probe each (host
//! routes first, then host-less ones), so it costs O(path depth) whatever the number of routes.

use crate::config::Route;
use crate::core::health::{self, HealthWords};
use sha1::{Digest, Sha1};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// One route as the workers use it: the configured [`Route`] (its fields read through
/// `Deref`) and its balancing state.
#[derive(Debug)]
pub struct RouteEntry {
    route: Route,
    /// How metrics name the route: `host/prefix`, or the prefix for any host.
    pub label: String,
    /// A hash of `label`: the same route keeps it across reloads (metrics count by it).
    pub id: u32,
    /// Shared round-robin cursor: touched once per handshake, never per relayed byte.
    next: AtomicUsize,
    /// With worker processes, the cursor lives in memory they share (word `.1` of `.0`), so
    /// their choices interleave as one round robin, as worker threads' do.
    shared: Option<(Arc<dyn SharedWords>, usize)>,
    /// Tunnels and requests open per backend (`least_conn`), this process's workers together
    /// (with worker processes, only for backends past the shared table's slots).
    pub(crate) load: Box<[AtomicU32]>,
    /// With worker processes, the loads live in memory they share ([`LoadWords`]) and this
    /// route's first slot in it (backend `i` is slot `.1 + i`, as in the health table), so
    /// `least_conn` compares all workers' connections.
    shared_load: Option<(Arc<dyn LoadWords>, usize)>,
    /// Each backend's sticky-cookie value (`balance = "cookie"`): a hash of its address, so it
    /// stays the same across restarts, reloads and proxies.
    pub(crate) cookie_ids: Box<[String]>,
    /// Each backend's weight (empty: all 1) and, when they differ, one cycle of the smooth
    /// weighted round robin the cursor walks.
    pub(crate) weights: Box<[u32]>,
    cycle: Box<[u16]>,
    /// The health table and this route's first slot in it (backend `i` is slot `.1 + i`);
    /// `None`: every backend is always available.
    health: Option<(Arc<dyn HealthWords>, usize)>,
}

/// Open connections per (route, backend) slot counted by every worker process together
/// (`least_conn`); each process's own share is kept too, so a dead process's can be taken back.
pub trait LoadWords: Send + Sync + std::fmt::Debug {
    /// The slots the table holds.
    fn load_slots(&self) -> usize;
    /// All workers' connections to slot `slot`.
    fn load(&self, slot: usize) -> u64;
    /// One connection more (`up`) or one less to slot `slot`, counted for this process.
    fn add_load(&self, slot: usize, up: bool);
}

/// Counter words shared with other processes (the driver's shared memory), for cursors.
pub trait SharedWords: Send + Sync + std::fmt::Debug {
    /// Word `i`; indices past the end wrap around (routes then share a cursor).
    fn word(&self, i: usize) -> &AtomicU64;
}

impl std::ops::Deref for RouteEntry {
    type Target = Route;

    fn deref(&self) -> &Route {
        &self.route
    }
}

impl RouteEntry {
    /// The next available backend in (weighted) round-robin order; advances the cursor. When
    /// none is available, the one the cursor names (the connect then finds none to try).
    pub fn first_backend(&self) -> usize {
        let c = match &self.shared {
            Some((words, i)) => words.word(*i).fetch_add(1, Ordering::Relaxed) as usize,
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        let n = self.backends.len().max(1);
        if !self.cycle.is_empty() {
            // The cycle spreads each backend's turns out: skipping an unavailable one hands
            // its turn to whichever comes next in the cycle.
            let len = self.cycle.len();
            return (0..len)
                .map(|k| usize::from(self.cycle[(c + k) % len]))
                .find(|&i| self.available(i))
                .unwrap_or(usize::from(self.cycle[c % len]));
        }
        if self.health.is_none() || (0..n).all(|i| self.available(i)) {
            return c % n;
        }
        // Round robin over the available ones, so that none takes a down backend's turns.
        let up = (0..n).filter(|&i| self.available(i)).count();
        if up == 0 {
            return c % n;
        }
        (0..n)
            .filter(|&i| self.available(i))
            .nth(c % up)
            .unwrap_or(c % n)
    }

    /// The backends are tried from `first` on in list order; the first available one at or
    /// after position `tried` of that order, as (its position, its index).
    pub fn next_to_try(&self, first: usize, tried: usize) -> Option<(usize, usize)> {
        let n = self.backends.len();
        (tried..n)
            .map(|k| (k, (first + k) % n))
            .find(|&(_, i)| self.available(i))
    }

    /// Open connections (tunnels and requests) to backend `i` for `least_conn`: every worker's
    /// (worker processes share the count when the backend has a slot in the shared table).
    pub fn load_of(&self, i: usize) -> u64 {
        match self.load_slot(i) {
            Some((words, slot)) => words.load(slot),
            None => self
                .load
                .get(i)
                .map_or(0, |l| u64::from(l.load(Ordering::Relaxed))),
        }
    }

    /// Counts one connection more (`up`) or one less to backend `i`.
    pub(crate) fn add_load(&self, i: usize, up: bool) {
        if let Some((words, slot)) = self.load_slot(i) {
            return words.add_load(slot, up);
        }
        if let Some(l) = self.load.get(i) {
            if up {
                l.fetch_add(1, Ordering::Relaxed);
            } else {
                l.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn load_slot(&self, i: usize) -> Option<(&dyn LoadWords, usize)> {
        let (words, base) = self.shared_load.as_ref()?;
        (i < self.backends.len() && base + i < words.load_slots())
            .then_some((words.as_ref(), base + i))
    }

    /// Backend `i`'s weight (1 unless configured).
    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1).max(1)
    }

    /// Backend `i`'s slot in the health table, if it has one.
    pub fn health_slot(&self, i: usize) -> Option<usize> {
        let (words, base) = self.health.as_ref()?;
        (base + i < words.slots() && i < self.backends.len()).then_some(base + i)
    }

    /// Backend `i`'s state bits ([`health::DOWN`], [`health::EJECTED`], [`health::DRAINED`]).
    pub fn backend_state(&self, i: usize) -> u64 {
        let (Some((words, _)), Some(slot)) = (&self.health, self.health_slot(i)) else {
            return 0;
        };
        health::state_word(words.as_ref(), slot).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// Backend `i` may take a new connection: not down, ejected or drained.
    pub fn available(&self, i: usize) -> bool {
        self.backend_state(i) == 0
    }

    /// A connect to backend `i` (or its answer) succeeded (`ok`) or failed: counted for passive
    /// ejection when the route has it (`[route.health]` with `eject_after` above 0).
    pub fn note_backend(&self, i: usize, ok: bool) {
        if !self
            .options
            .health
            .as_ref()
            .is_some_and(|h| h.eject_after > 0)
        {
            return;
        }
        if let (Some((words, _)), Some(slot)) = (&self.health, self.health_slot(i)) {
            health::note(words.as_ref(), slot, ok);
        }
    }
}

/// A matched route and how to rewrite the path for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub route: usize,
    /// Bytes of the path consumed by the prefix (0 when `strip_prefix` is off or prefix is `/`).
    pub strip: usize,
}

/// All routes, indexed for lookup.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<RouteEntry>,
    by_host: HashMap<String, HashMap<String, usize>>,
    any_host: HashMap<String, usize>,
}

impl RouteTable {
    /// Builds the table. Config validation already refused duplicates; a later duplicate wins.
    pub fn new(routes: &[Route]) -> RouteTable {
        RouteTable::build(routes, None)
    }

    /// Like [`RouteTable::new`], the round-robin cursors in `shared` (route `i` uses word `i`).
    pub fn with_shared_cursors(routes: &[Route], shared: Arc<dyn SharedWords>) -> RouteTable {
        RouteTable::build(routes, Some(shared))
    }

    fn build(routes: &[Route], shared: Option<Arc<dyn SharedWords>>) -> RouteTable {
        let mut t = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            t.routes.push(RouteEntry {
                route: r.clone(),
                label: route_label(r),
                id: route_id(&route_label(r)),
                next: AtomicUsize::new(0),
                shared: shared.clone().map(|w| (w, i)),
                load: r.backends.iter().map(|_| AtomicU32::new(0)).collect(),
                shared_load: None,
                cookie_ids: r.backends.iter().map(cookie_id).collect(),
                weights: r.options.weights.clone().into_boxed_slice(),
                cycle: if r.options.weights.iter().any(|&w| w != 1) {
                    health::smooth_cycle(&r.options.weights).into_boxed_slice()
                } else {
                    Box::new([])
                },
                health: None,
            });
            match &r.host {
                Some(h) => {
                    t.by_host
                        .entry(h.to_ascii_lowercase())
                        .or_default()
                        .insert(r.prefix.clone(), i);
                }
                None => {
                    t.any_host.insert(r.prefix.clone(), i);
                }
            }
        }
        t
    }

    /// Gives every route its slots in the health table `words`, in route order (backends past
    /// the table's slots have none and are always available).
    pub fn with_health(mut self, words: Arc<dyn HealthWords>) -> RouteTable {
        self.lay_out_slots(words.slots(), |r, base| {
            r.health = Some((words.clone(), base))
        });
        self
    }

    /// Counts `least_conn` loads in `words`, shared by worker processes: route by route, each
    /// backend its slot in order (as [`RouteTable::with_health`]; backends past the table's
    /// slots count in this process only). A reload lays the slots out again: a connection
    /// opened before it gives its count back to the slot it took, which may then name another
    /// backend until it closes.
    pub fn with_shared_load(mut self, words: Arc<dyn LoadWords>) -> RouteTable {
        self.lay_out_slots(words.load_slots(), |r, base| {
            r.shared_load = Some((words.clone(), base))
        });
        self
    }

    /// Gives each route whose first backend falls within a table of `slots` its first slot
    /// (`set(route, base)`): route by route, each backend the next slot.
    fn lay_out_slots(&mut self, slots: usize, mut set: impl FnMut(&mut RouteEntry, usize)) {
        let mut base = 0;
        for r in &mut self.routes {
            if base < slots {
                set(r, base);
            }
            base += r.backends.len();
        }
    }

    pub fn get(&self, i: usize) -> &RouteEntry {
        &self.routes[i]
    }

    /// Every route, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &RouteEntry> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Finds the route for `host` (without port) and `path` (starts with `/`, no query).
    pub fn lookup(&self, host: &str, path: &str) -> Option<Match> {
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let host_map = self.by_host.get(host.as_ref());
        let mut cand = path;
        loop {
            let hit = host_map
                .and_then(|m| m.get(cand))
                .or_else(|| self.any_host.get(cand));
            if let Some(&route) = hit {
                let r = &self.routes[route];
                let strip = if r.strip_prefix && cand != "/" {
                    cand.len()
                } else {
                    0
                };
                return Some(Match { route, strip });
            }
            match cand.rfind('/') {
                None => return None,
                Some(0) if cand == "/" => return None,
                Some(0) => cand = "/",
                Some(i) => cand = &cand[..i],
            }
        }
    }
}

/// The sticky-cookie value of a backend (`balance = "cookie"`): 16 hex digits of SHA-1 of its
/// address, the same across restarts, reloads and proxies.
pub fn cookie_id(addr: &std::net::SocketAddr) -> String {
    let digest = Sha1::digest(addr.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A route's stable id for metrics: 32 bits of SHA-1 of its label.
pub fn route_id(label: &str) -> u32 {
    let d = Sha1::digest(label.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The [`RouteEntry::id`] the route table gives `r`.
pub fn id_of(r: &Route) -> u32 {
    route_id(&route_label(r))
}

/// `host/prefix`, or `prefix` for a route that matches any Host.
pub fn route_label(r: &Route) -> String {
    match &r.host {
        Some(h) => format!("{h}{}", r.prefix),
        None => r.prefix.clone(),
    }
}

/// The path the backend sees: `path` with `strip` bytes removed, never empty, plus `query`.
pub fn rewritten_target<'a>(path: &'a str, strip: usize, query: &'a str) -> (&'a str, &'a str) {
    let rest = &path[strip.min(path.len())..];
    (if rest.is_empty() { "/" } else { rest }, query)
}

/// A host-less route to `backends` that strips its prefix and appends X-Forwarded-For: what
/// the core's unit tests route by.
#[cfg(test)]
pub(crate) fn test_route(prefix: &str, backends: &[&str]) -> Route {
    Route {
        prefix: prefix.into(),
        host: None,
        backends: backends.iter().map(|b| b.parse().expect("addr")).collect(),
        strip_prefix: true,
        forwarded_for: crate::config::ForwardedFor::Append,
        send_proxy: None,
        options: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ForwardedFor;

    fn route(prefix: &str, host: Option<&str>, strip: bool) -> Route {
        Route {
            prefix: prefix.into(),
            host: host.map(Into::into),
            backends: vec!["127.0.0.1:1".parse().expect("addr")],
            strip_prefix: strip,
            forwarded_for: ForwardedFor::Append,
            send_proxy: None,
            options: Default::default(),
        }
    }

    #[test]
    fn lookup_table() {
        let t = RouteTable::new(&[
            route("/notice", None, true),
            route("/msg", None, true),
            route("/msg/admin", None, false),
            route("/", Some("example.com"), true),
            route("/notice", Some("Example.com"), true),
        ]);
        type Case<'a> = (&'a str, &'a str, Option<(usize, &'a str)>);
        let cases: &[Case<'_>] = &[
            ("a", "/notice", Some((0, "/"))),
            ("a", "/notice/", Some((0, "/"))),
            ("a", "/notice/a/b", Some((0, "/a/b"))),
            ("a", "/noticeboard", None),
            ("a", "/msg/admin/x", Some((2, "/msg/admin/x"))),
            ("a", "/msg/adminx", Some((1, "/adminx"))),
            ("a", "/", None),
            ("EXAMPLE.com", "/notice/x", Some((4, "/x"))),
            ("example.com", "/other", Some((3, "/other"))),
            ("example.com", "/", Some((3, "/"))),
        ];
        for &(host, path, want) in cases {
            let got = t
                .lookup(host, path)
                .map(|m| (m.route, rewritten_target(path, m.strip, "").0));
            assert_eq!(got, want, "{host} {path}");
        }
    }

    #[test]
    fn round_robin_wraps() {
        let mut r = route("/", None, true);
        r.backends.push("127.0.0.1:2".parse().expect("addr"));
        let t = RouteTable::new(&[r]);
        let picks: Vec<usize> = (0..5).map(|_| t.get(0).first_backend()).collect();
        assert_eq!(picks, [0, 1, 0, 1, 0]);
    }
}
