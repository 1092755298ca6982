//! `[[route]]`: one table per route.

use super::model::BackendTls;
use super::value::{normalize_host, normalize_origin, normalize_prefix};
use super::walk::{key, required, Field, Key, Setter};
use super::{
    BackendProtocol, Balance, Config, ConfigError, ForwardedFor, HashKey, ProxyVersion, Route,
    SameSite, StickyCookie,
};

/// The keys of one `[[route]]` table, one a row.
#[rustfmt::skip]
const KEYS: &[Key<Route>] = &[
    required("prefix", |r, f| f.parsed(normalize_prefix).map(|p| r.prefix = p)),
    key("host", |r, f| f.parsed(normalize_host).map(|h| r.host = Some(h))),
    required("backends", super::health::backends),
    key("strip_prefix", |r, f| f.bool().map(|b| r.strip_prefix = b)),
    key("forwarded_for", |r, f| {
        f.choice(&FORWARDED_FOR, ForwardedFor::as_str).map(|v| r.forwarded_for = v)
    }),
    key("send_proxy", |r, f| f.choice(&SEND_PROXY, send_proxy_spelling).map(|v| r.send_proxy = v)),
    key("http", |r, f| f.bool().map(|b| r.options.http = b)),
    key("response_timeout", |r, f| f.positive_duration().map(|d| r.options.response_timeout = d)),
    key("balance", balance),
    key("hash_key", hash_key),
    key("cookie_name", |r, f| cookie(r, f, |c, f| f.parsed(cookie_name).map(|n| c.name = n))),
    key("cookie_secure", |r, f| cookie(r, f, |c, f| f.bool().map(|b| c.secure = b))),
    key("cookie_http_only", |r, f| cookie(r, f, |c, f| f.bool().map(|b| c.http_only = b))),
    key("cookie_same_site", |r, f| {
        cookie(r, f, |c, f| f.choice(&SAME_SITE, same_site_spelling).map(|s| c.same_site = s))
    }),
    key("origins", origins),
    key("protocol", |r, f| f.choice(&PROTOCOLS, protocol_spelling).map(|p| r.options.protocol = p)),
    key("health", super::health::health),
    key("backend_tls", backend_tls),
    key("backend_ca", |r, f| tls_option(r, f, |t, f| f.str().map(|p| t.ca = Some(p.into())))),
    key("backend_server_name", |r, f| {
        tls_option(r, f, |t, f| f.parsed(server_name).map(|n| t.server_name = Some(n)))
    }),
];

const BALANCE: [&str; 4] = ["round_robin", "least_conn", "hash", "cookie"];
const SAME_SITE: [SameSite; 3] = [SameSite::Lax, SameSite::Strict, SameSite::None];
const PROTOCOLS: [BackendProtocol; 2] = [BackendProtocol::Http, BackendProtocol::Uwsgi];

fn same_site_spelling(s: SameSite) -> &'static str {
    match s {
        SameSite::Lax => "lax",
        SameSite::Strict => "strict",
        SameSite::None => "none",
    }
}

fn protocol_spelling(p: BackendProtocol) -> &'static str {
    match p {
        BackendProtocol::Http => "http",
        BackendProtocol::Uwsgi => "uwsgi",
    }
}

fn balance(route: &mut Route, field: &Field<'_>) -> Result<(), ConfigError> {
    route.options.balance = match field.choice(&BALANCE, |s| s)? {
        "least_conn" => Balance::LeastConn,
        "hash" => Balance::Hash(HashKey::ClientIp),
        "cookie" => Balance::Cookie(StickyCookie::default()),
        _ => Balance::RoundRobin,
    };
    Ok(())
}

/// `client_ip`, `cookie:NAME`, `query:NAME` or `header:NAME`; only with `balance = "hash"`
/// (read after `balance`).
fn hash_key(route: &mut Route, field: &Field<'_>) -> Result<(), ConfigError> {
    let Balance::Hash(key) = &mut route.options.balance else {
        return Err(field.error("hash_key needs balance = \"hash\" in the same [[route]]"));
    };
    let s = field.str()?;
    let named = |kind: &str| {
        s.strip_prefix(kind)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b';'))
            .map(str::to_owned)
    };
    *key = if s == "client_ip" {
        HashKey::ClientIp
    } else if let Some(n) = named("cookie:") {
        HashKey::Cookie(n)
    } else if let Some(n) = named("query:") {
        HashKey::Query(n)
    } else if let Some(n) = named("header:") {
        HashKey::Header(n)
    } else {
        return Err(field.error(format!(
            "invalid value {s:?}: expected \"client_ip\", \"cookie:NAME\", \"query:NAME\" or \"header:NAME\""
        )));
    };
    Ok(())
}

/// A `cookie_*` key: only with `balance = "cookie"` (read after `balance`).
fn cookie(r: &mut Route, f: &Field<'_>, set: Setter<StickyCookie>) -> Result<(), ConfigError> {
    let sticky = match &mut r.options.balance {
        Balance::Cookie(c) => Some(c),
        _ => None,
    };
    f.read_into(
        sticky,
        set,
        "cookie settings need balance = \"cookie\" in the same [[route]]",
    )
}

/// A cookie name is an RFC 6265 token.
fn cookie_name(s: &str) -> Result<String, String> {
    let separator = |b: u8| b"()<>@,;:\\\"/[]?={} \t".contains(&b);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && !separator(b)) {
        return Err(format!(
            "invalid cookie name {s:?}: letters, digits and !#$%&'*+-.^_`|~ only"
        ));
    }
    Ok(s.to_owned())
}

fn origins(route: &mut Route, field: &Field<'_>) -> Result<(), ConfigError> {
    let items = field.items("an array of origins, such as [\"https://example.com\"]")?;
    for item in items {
        route.options.origins.push(item.parsed(normalize_origin)?);
    }
    Ok(())
}

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
        if route.options.protocol == BackendProtocol::Uwsgi && route.send_proxy.is_some() {
            let at = table.require("send_proxy")?;
            return Err(at.error("uwsgi backends take no PROXY header: remove send_proxy"));
        }
        cfg.routes.push(route);
    }
    Ok(())
}
/// `backend_tls = true`: the backends speak TLS (read after `backends`).
fn backend_tls(route: &mut Route, field: &Field<'_>) -> Result<(), ConfigError> {
    if field.bool()? {
        route
            .options
            .backend_tls
            .get_or_insert_with(BackendTls::default);
    } else if route.options.backend_tls.is_some() {
        return Err(field.error(
            "backend_tls = false contradicts the wss:// or https:// backends of this route",
        ));
    }
    Ok(())
}

/// A `backend_*` TLS key: only with TLS backends (read after `backend_tls`).
fn tls_option(r: &mut Route, f: &Field<'_>, set: Setter<BackendTls>) -> Result<(), ConfigError> {
    f.read_into(
        r.options.backend_tls.as_mut(),
        set,
        "TLS settings need TLS backends: add backend_tls = true (or write the backends as wss://ADDR) in the same [[route]]",
    )
}

/// A DNS name or an IP address, as rustls checks it against the certificate.
fn server_name(s: &str) -> Result<String, String> {
    rustls::pki_types::ServerName::try_from(s)
        .map(|_| s.to_owned())
        .map_err(|_| format!("invalid server name {s:?}: expected a DNS name such as \"backend.example.com\" or an IP address"))
}
