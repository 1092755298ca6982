//! What a connection's rules are: the parts of the configuration the core reads, shared
//! read-only by all connections accepted under them (a reload makes a new one).

use crate::config::Timeouts;
use crate::core::route::RouteTable;
use std::net::IpAddr;

/// What the handshake needs from the configuration.
#[derive(Debug)]
pub struct Settings {
    pub routes: RouteTable,
    pub timeouts: Timeouts,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// Clients whose X-Forwarded-For is appended to; empty: the route decides for everyone.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Peers allowed to send a PROXY protocol header on listeners that expect one.
    pub proxy_trusted: Vec<ipnet::IpNet>,
    /// Forward header names containing `_` (lookalikes of stripped headers never pass).
    pub underscores_in_headers: bool,
    /// Backend connections of plain requests may be kept for reuse (`backend_pool.max_idle`
    /// is not 0).
    pub backend_reuse: bool,
}

impl Settings {
    /// Settings with the given routes and timeouts and default limits (for tests and benches).
    pub fn new(routes: RouteTable, timeouts: Timeouts) -> Settings {
        Settings {
            routes,
            timeouts,
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            trusted_proxies: Vec::new(),
            proxy_trusted: Vec::new(),
            underscores_in_headers: true,
            backend_reuse: true,
        }
    }

    /// True when `peer` may send a PROXY protocol header (on a listener that expects one).
    pub fn proxy_trusts(&self, peer: IpAddr) -> bool {
        in_nets(&self.proxy_trusted, peer)
    }
}

/// True when `ip` is in one of `nets` (an IPv4-mapped IPv6 address counts as IPv4).
pub fn in_nets(nets: &[ipnet::IpNet], ip: IpAddr) -> bool {
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}
