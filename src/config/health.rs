//! `[route.health]` (a sub-table of the `[[route]]` above it) and backend weights.
//!
//! ```toml
//! [[route]]
//! prefix = "/"
//! backends = ["10.0.0.1:9000", { addr = "10.0.0.2:9000", weight = 3 }]
//!
//! [route.health]
//! kind = "http"          # "tcp", "http" or "websocket"; without it: passive ejection only
//! path = "/healthz"
//! expect_status = 200
//! interval = "2s"
//! timeout = "1s"
//! rise = 2
//! fall = 3
//! eject_after = 5        # consecutive failed connects or bad answers; 0: no passive ejection
//! eject_time = "10s"     # doubles for each ejection that follows another, up to eject_max_time
//! eject_max_time = "5m"
//! max_ejected_percent = 50
//! ```

use super::value::{normalize_host, normalize_prefix, parse_backend_url};
use super::walk::{key, Field, Key, Setter};
use super::{CheckKind, ConfigError, Health, HealthCheck, Route};
use std::net::SocketAddr;
use toml::de::DeValue;

/// The largest weight of one backend.
pub const MAX_WEIGHT: u32 = 256;
/// The largest sum of a route's weights (the smooth weighted round robin is one cycle of
/// this many picks).
pub const MAX_WEIGHT_SUM: u32 = 65_536;

const KINDS: [CheckKind; 3] = [CheckKind::Tcp, CheckKind::Http, CheckKind::WebSocket];

/// The keys of `[route.health]`, one a row (`path`, `expect_status` and `host` after `kind`).
#[rustfmt::skip]
const KEYS: &[Key<Health>] = &[
    key("kind", |h, f| {
        let kind = f.choice(&KINDS, CheckKind::as_str)?;
        h.check = Some(HealthCheck {
            kind,
            path: "/".into(),
            expect_status: if kind == CheckKind::WebSocket { 101 } else { 200 },
            host: None,
        });
        Ok(())
    }),
    key("path", |h, f| check(h, f, |c, f| f.parsed(check_path).map(|p| c.path = p))),
    key("expect_status", |h, f| {
        check(h, f, |c, f| {
            if c.kind != CheckKind::Http {
                return Err(f.error("expect_status needs kind = \"http\" (a websocket check expects 101)"));
            }
            f.uint_in(100..=599).map(|s| c.expect_status = s)
        })
    }),
    key("host", |h, f| check(h, f, |c, f| f.parsed(normalize_host).map(|v| c.host = Some(v)))),
    key("interval", |h, f| f.positive_duration().map(|d| h.interval = d)),
    key("timeout", |h, f| f.positive_duration().map(|d| h.timeout = d)),
    key("rise", |h, f| f.uint_in(1..=100).map(|n| h.rise = n)),
    key("fall", |h, f| f.uint_in(1..=100).map(|n| h.fall = n)),
    key("eject_after", |h, f| f.uint_in(0..=1000).map(|n| h.eject_after = n)),
    key("eject_time", |h, f| f.positive_duration().map(|d| h.eject_time = d)),
    key("eject_max_time", |h, f| f.positive_duration().map(|d| h.eject_max_time = d)),
    key("max_ejected_percent", |h, f| f.uint_in(0..=100).map(|n| h.max_ejected_percent = n)),
];

/// A key of the active check: only after `kind`.
fn check(h: &mut Health, field: &Field<'_>, set: Setter<HealthCheck>) -> Result<(), ConfigError> {
    field.read_into(
        h.check.as_mut(),
        set,
        "this key belongs to an active check: add kind = \"tcp\", \"http\" or \"websocket\"",
    )
}

/// A path with its query, as a request target: starts with `/`, printable ASCII.
fn check_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "invalid path {s:?}: must start with '/' and hold printable ASCII only"
        ));
    }
    // The same checks as a prefix, for the part before the query.
    let path = s.split('?').next().unwrap_or(s);
    normalize_prefix(path)?;
    Ok(s.to_owned())
}

/// `[route.health]`.
pub(super) fn health(route: &mut Route, field: &Field<'_>) -> Result<(), ConfigError> {
    let mut h = Health::default();
    field.section(&mut h, KEYS)?;
    if h.eject_time > h.eject_max_time {
        return Err(field.error(format!(
            "eject_time ({:?}) is longer than eject_max_time ({:?}): raise eject_max_time",
            h.eject_time, h.eject_max_time
        )));
    }
    route.options.health = Some(h);
    Ok(())
}

/// `backends`: each `"host:port"` or `{ addr = "host:port", weight = N }` (weight 1 to 256).
pub(super) fn backends(route: &mut Route, field: &Field<'_>) -> Result<(), ConfigError> {
    let items = field.items(
        "an array of backend addresses, such as [\"127.0.0.1:50001\", { addr = \"127.0.0.1:50002\", weight = 2 }]",
    )?;
    if items.is_empty() {
        return Err(field.error("must list at least one backend"));
    }
    let mut addrs = Vec::with_capacity(items.len());
    let mut weights = Vec::with_capacity(items.len());
    let mut tls = None;
    for item in &items {
        // A host name (`app:8080`, `srv:_ws._tcp.app`): looked up by the resolver thread.
        if !matches!(item.value(), DeValue::Table(_)) {
            if let Some(name) = super::names::parse_name(item.str()?) {
                let name = name.map_err(|e| item.error(e))?;
                if !route.options.names.contains(&name) {
                    route.options.names.push(name);
                }
                continue;
            }
        }
        let (addr, weight, this_tls) = backend(item)?;
        addrs.push(addr);
        weights.push(weight);
        if *tls.get_or_insert(this_tls) != this_tls {
            return Err(item.error(
                "one route's backends are all TLS (wss://, https://) or all plain: split them into two routes",
            ));
        }
    }
    if tls == Some(true) {
        route.options.backend_tls = Some(super::model::BackendTls::default());
    }
    let sum: u32 = weights.iter().sum();
    if sum > MAX_WEIGHT_SUM {
        return Err(field.error(format!(
            "the weights add up to {sum}, over {MAX_WEIGHT_SUM}: use smaller weights"
        )));
    }
    route.backends = addrs;
    route.options.weights = if weights.iter().all(|&w| w == 1) {
        Vec::new()
    } else {
        weights
    };
    Ok(())
}

/// One backend: an address string (`ADDR`, or `wss://ADDR` / `https://ADDR` for a TLS
/// backend), or a table with `addr` and `weight`. Returns (address, weight, TLS).
fn backend(item: &Field<'_>) -> Result<(SocketAddr, u32, bool), ConfigError> {
    if !matches!(item.value(), DeValue::Table(_)) {
        let (tls, addr) = item.parsed(parse_backend_url)?;
        return Ok((addr, 1, tls));
    }
    struct One {
        addr: Option<(bool, SocketAddr)>,
        weight: u32,
    }
    #[rustfmt::skip]
    const ONE: &[Key<One>] = &[
        super::walk::required("addr", |b, f| f.parsed(parse_backend_url).map(|a| b.addr = Some(a))),
        key("weight", |b, f| f.uint_in(1..=u64::from(MAX_WEIGHT)).map(|w| b.weight = w)),
    ];
    let mut one = One {
        addr: None,
        weight: 1,
    };
    item.table()?.read(&mut one, ONE)?;
    let (tls, addr) = one
        .addr
        .ok_or_else(|| item.error("a backend table needs addr = \"host:port\""))?;
    Ok((addr, one.weight, tls))
}
