//! The document's top level: its own keys (`listen`, `workers`, `worker_model`, `relay`, `admin`, ...) and the
//! place of each section in it.

use super::value::parse_addr;
use super::walk::{key, Field, Key, Table};
use super::{route, sections, Config, ConfigError, DriverMode, RelayMode, WorkerModel};

pub(super) const MAX_WORKERS: u64 = 1024;

/// The top-level keys, in the order they are documented and read, one a row: `listen` comes
/// first because `[proxy_protocol]` checks its addresses against it.
#[rustfmt::skip]
const KEYS: &[Key<Config>] = &[
    key("listen", listen),
    key("workers", |c, f| f.uint_in(1..=MAX_WORKERS).map(|n| c.workers = Some(n))),
    key("worker_model", |c, f| f.choice(&WorkerModel::ALL, WorkerModel::as_str).map(|m| c.worker_model = m)),
    key("relay", |c, f| f.choice(&RELAY_MODES, RelayMode::as_str).map(|m| c.relay.mode = m)),
    key("driver", |c, f| f.choice(&DRIVERS, DriverMode::as_str).map(|d| c.driver = d)),
    key("timeouts", |c, f| f.section(&mut c.timeouts, sections::TIMEOUTS)),
    key("limits", |c, f| f.section(&mut c.limits, sections::LIMITS)),
    key("keepalive", |c, f| f.section(&mut c.keepalive, sections::KEEPALIVE)),
    key("splice", |c, f| f.section(&mut c.relay, sections::SPLICE)),
    key("uring", sections::uring),
    key("route", route::routes),
    key("admin", |c, f| f.parsed(parse_addr).map(|a| c.admin = Some(a))),
    key("access_log", sections::access_log),
    key("trusted_proxies", |c, f| f.nets().map(|nets| c.trusted_proxies = nets)),
    key("proxy_protocol", sections::proxy_protocol),
    key("underscores_in_headers", |c, f| f.bool().map(|b| c.underscores_in_headers = b)),
    key("tls", sections::tls),
    key("backend_pool", |c, f| f.section(&mut c.backend_pool, sections::BACKEND_POOL)),
    key("dns", |c, f| f.section(&mut c.dns, super::names::DNS)),
];

const RELAY_MODES: [RelayMode; 3] = [RelayMode::Auto, RelayMode::Splice, RelayMode::Copy];
const DRIVERS: [DriverMode; 3] = [DriverMode::Epoll, DriverMode::Uring, DriverMode::Auto];

/// The whole document.
pub(super) fn read(root: &Table<'_>) -> Result<Config, ConfigError> {
    let mut cfg = Config::with_defaults(Vec::new(), Vec::new());
    root.read(&mut cfg, KEYS)?;
    if cfg.listen.is_empty() && cfg.tls.listen.is_empty() {
        return Err(root.missing(
            "listen",
            "missing required key (or a [tls] section with its own `listen`)",
        ));
    }
    if cfg.routes.is_empty() {
        return Err(root.missing(
            "route",
            "at least one [[route]] with a prefix and backends is required",
        ));
    }
    Ok(cfg)
}

fn listen(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    let items = field.items("an array of addresses, such as [\"127.0.0.1:8080\"]")?;
    if items.is_empty() {
        return Err(field.error("must list at least one address"));
    }
    for item in items {
        let addr = item.parsed(parse_addr)?;
        if cfg.listen.contains(&addr) {
            return Err(item.error(format!("{addr} is listed twice")));
        }
        cfg.listen.push(addr);
    }
    Ok(())
}
