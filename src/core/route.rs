//! Routing: (host, path) -> route -> backend.
//!
//! Lookup walks the path's own `/`-boundaries from the longest to `/`, one hash probe each (host
//! routes first, then host-less ones), so it costs O(path depth) whatever the number of routes.

use crate::config::{ForwardedFor, ProxyVersion, Route, RouteOptions};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// One route as the workers use it.
#[derive(Debug)]
pub struct RouteEntry {
    pub prefix: String,
    pub host: Option<String>,
    pub backends: Vec<SocketAddr>,
    pub strip_prefix: bool,
    pub forwarded_for: ForwardedFor,
    pub send_proxy: Option<ProxyVersion>,
    /// Plain HTTP, balancing, origins, backend protocol.
    pub options: RouteOptions,
    /// How metrics name the route: `host/prefix`, or the prefix for any host.
    pub label: String,
    /// A hash of `label`: the same route keeps it across reloads (metrics count by it).
    pub id: u32,
    /// Shared round-robin cursor: touched once per handshake, never per relayed byte.
    next: AtomicUsize,
    /// Tunnels and requests open per backend, all workers together (`least_conn`).
    pub(crate) load: Box<[AtomicU32]>,
    /// Each backend's sticky-cookie value (`balance = "cookie"`): a hash of its address, so it
    /// stays the same across restarts, reloads and proxies.
    pub(crate) cookie_ids: Box<[String]>,
}

impl RouteEntry {
    /// The next backend in round-robin order; advances the cursor.
    pub fn first_backend(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len().max(1)
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
        let mut t = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            t.routes.push(RouteEntry {
                prefix: r.prefix.clone(),
                host: r.host.clone(),
                backends: r.backends.clone(),
                strip_prefix: r.strip_prefix,
                forwarded_for: r.forwarded_for,
                send_proxy: r.send_proxy,
                options: r.options.clone(),
                label: route_label(r),
                id: crate::core::balance::route_id(&route_label(r)),
                next: AtomicUsize::new(0),
                load: r.backends.iter().map(|_| AtomicU32::new(0)).collect(),
                cookie_ids: r
                    .backends
                    .iter()
                    .map(crate::core::balance::cookie_id)
                    .collect(),
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

/// `host/prefix`, or `prefix` for a route that matches any Host.
fn route_label(r: &Route) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
