//! `[[route]]`: one table per route.

use super::value::{normalize_host, normalize_prefix, parse_backend};
use super::walk::{key, required, Field, Key};
use super::{Config, ConfigError, ForwardedFor, ProxyVersion, Route};

/// The keys of one `[[route]]` table, one a row.
#[rustfmt::skip]
const KEYS: &[Key<Route>] = &[
    required("prefix", |r, f| f.parsed(normalize_prefix).map(|p| r.prefix = p)),
    key("host", |r, f| f.parsed(normalize_host).map(|h| r.host = Some(h))),
    required("backends", backends),
    key("strip_prefix", |r, f| f.bool().map(|b| r.strip_prefix = b)),
    key("forwarded_for", |r, f| {
        f.choice(&FORWARDED_FOR, ForwardedFor::as_str).map(|v| r.forwarded_for = v)
    }),
    key("send_proxy", |r, f| f.choice(&SEND_PROXY, send_proxy_spelling).map(|v| r.send_proxy = v)),
];

const FORWARDED_FOR: [ForwardedFor; 2] = [ForwardedFor::Append, ForwardedFor::Replace];
const SEND_PROXY: [Option<ProxyVersion>; 3] =
    [Some(ProxyVersion::V1), Some(ProxyVersion::V2), None];

fn send_proxy_spelling(version: Option<ProxyVersion>) -> &'static str {
    match version {
        Some(ProxyVersion::V1) => "v1",
        Some(ProxyVersion::V2) => "v2",
        None => "none",
    }
}

/// The `[[route]]` array. Two routes with the same prefix and host are an error naming both lines.
pub(super) fn routes(cfg: &mut Config, field: &Field<'_>) -> Result<(), ConfigError> {
    // The prefix line of each route in `cfg.routes`, for the duplicate message.
    let mut lines: Vec<usize> = Vec::new();
    for item in field.items("[[route]] tables")? {
        let table = item.table()?;
        let mut route = Route::with_defaults(String::new(), Vec::new());
        table.read(&mut route, KEYS)?;
        let prefix = table.require("prefix")?;
        let same = |r: &Route| r.prefix == route.prefix && r.host == route.host;
        if let Some(&line) = cfg.routes.iter().position(same).and_then(|i| lines.get(i)) {
            let host = route
                .host
                .as_deref()
                .map_or("any host".to_owned(), |h| format!("host {h}"));
            return Err(prefix.error(format!(
                "duplicate route: prefix {:?} for {host} is already defined on line {line}",
                route.prefix
            )));
        }
        lines.push(prefix.line());
        cfg.routes.push(route);
    }
    Ok(())
}

fn backends(route: &mut Route, field: &Field<'_>) -> Result<(), ConfigError> {
    let items = field.items("an array of backend addresses, such as [\"127.0.0.1:50001\"]")?;
    if items.is_empty() {
        return Err(field.error("must list at least one backend"));
    }
    route.backends = items
        .iter()
        .map(|item| item.parsed(parse_backend))
        .collect::<Result<_, _>>()?;
    Ok(())
}
