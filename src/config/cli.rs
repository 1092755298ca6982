//! A configuration from command-line flags (`--listen`, `--route`, `--workers`, `--relay`,
//! `--tls-listen`, `--cert`, `--key`).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::root::MAX_WORKERS;
use super::value::{normalize_prefix, parse_backend_url};
use super::{CertPair, Config, ConfigError, RelayMode, Route};

/// The TLS flags: `--tls-listen ADDR` (repeatable) and `--cert FILE --key FILE`, repeatable as
/// pairs, matched in order.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    pub listen: Vec<SocketAddr>,
    pub certs: Vec<PathBuf>,
    pub keys: Vec<PathBuf>,
    /// `--redirect-listen ADDR` (repeatable): plain listeners answering with redirects to the
    /// first TLS listener's port.
    pub redirect: Vec<SocketAddr>,
}

impl Config {
    /// [`Config::from_cli`] with TLS listeners too; `listen` may then be empty.
    pub fn from_cli_with_tls(
        listen: Vec<SocketAddr>,
        tls: TlsFlags,
        routes: &[String],
        workers: Option<usize>,
        relay: Option<RelayMode>,
    ) -> Result<Config, ConfigError> {
        if tls.certs.len() != tls.keys.len() {
            return Err(ConfigError::flag(
                "--cert",
                format!(
                    "{} --cert and {} --key given: each certificate needs its key, as --cert FILE --key FILE pairs",
                    tls.certs.len(),
                    tls.keys.len()
                ),
            ));
        }
        if !tls.listen.is_empty() && tls.certs.is_empty() {
            return Err(ConfigError::flag(
                "--tls-listen",
                "a TLS listener needs --cert FILE --key FILE",
            ));
        }
        if tls.listen.is_empty() && !tls.certs.is_empty() {
            return Err(ConfigError::flag(
                "--cert",
                "certificates need a TLS listener: add --tls-listen ADDR",
            ));
        }
        for (i, addr) in tls.listen.iter().enumerate() {
            if tls.listen[..i].contains(addr) || listen.contains(addr) {
                return Err(ConfigError::flag(
                    "--tls-listen",
                    format!("{addr} is given twice (a port speaks either TLS or plain HTTP)"),
                ));
            }
        }
        let plain = if listen.is_empty() && !tls.listen.is_empty() {
            // Checked below like a plain listener, then put back.
            tls.listen[..1].to_vec()
        } else {
            listen.clone()
        };
        for (i, addr) in tls.redirect.iter().enumerate() {
            if tls.redirect[..i].contains(addr)
                || listen.contains(addr)
                || tls.listen.contains(addr)
            {
                return Err(ConfigError::flag(
                    "--redirect-listen",
                    format!("{addr} is given twice (a redirect listener needs a port of its own)"),
                ));
            }
        }
        let mut cfg = Config::from_cli(plain, routes, workers, relay)?;
        cfg.listen = listen;
        cfg.tls.redirect_listen = tls.redirect;
        cfg.tls.listen = tls.listen;
        cfg.tls.certs = tls
            .certs
            .into_iter()
            .zip(tls.keys)
            .map(|(cert, key)| CertPair { cert, key })
            .collect();
        Ok(cfg)
    }

    /// Builds a configuration from command-line flags; everything not given takes its default.
    ///
    /// Each route is `PREFIX=HOST:PORT[,HOST:PORT...]`, e.g. `/notice=127.0.0.1:50001`. Routes built
    /// this way match any Host, strip their prefix and append to X-Forwarded-For. Errors name the
    /// flag and the bad value.
    pub fn from_cli(
        listen: Vec<SocketAddr>,
        routes: &[String],
        workers: Option<usize>,
        relay: Option<RelayMode>,
    ) -> Result<Config, ConfigError> {
        if listen.is_empty() {
            return Err(ConfigError::flag(
                "--listen",
                "at least one --listen ADDR is required",
            ));
        }
        for (i, addr) in listen.iter().enumerate() {
            if listen[..i].contains(addr) {
                return Err(ConfigError::flag(
                    "--listen",
                    format!("{addr} is given twice"),
                ));
            }
        }
        if let Some(n) = workers {
            if n == 0 || n as u64 > MAX_WORKERS {
                return Err(ConfigError::flag(
                    "--workers",
                    format!("invalid value {n}: must be between 1 and {MAX_WORKERS}"),
                ));
            }
        }
        if routes.is_empty() {
            return Err(ConfigError::flag(
                "--route",
                "at least one --route PREFIX=HOST:PORT is required",
            ));
        }
        let mut parsed: Vec<Route> = Vec::with_capacity(routes.len());
        for raw in routes {
            let bad =
                |why: String| ConfigError::flag("--route", format!("invalid value {raw:?}: {why}"));
            let route = parse_route(raw).map_err(&bad)?;
            if parsed.iter().any(|r| r.prefix == route.prefix) {
                return Err(bad(format!("prefix {:?} is routed twice", route.prefix)));
            }
            parsed.push(route);
        }
        let mut cfg = Config::with_defaults(listen, parsed);
        cfg.workers = workers;
        cfg.relay.mode = relay.unwrap_or_default();
        Ok(cfg)
    }
}

/// `PREFIX=HOST:PORT[,HOST:PORT...]`; each backend may be written `wss://HOST:PORT` (TLS).
fn parse_route(raw: &str) -> Result<Route, String> {
    let Some((prefix, backends)) = raw.split_once('=') else {
        return Err(
            "expected PREFIX=HOST:PORT[,HOST:PORT...], such as /notice=127.0.0.1:50001".into(),
        );
    };
    let prefix = normalize_prefix(prefix).map_err(|m| format!("prefix: {m}"))?;
    let mut tls = None;
    let mut addrs = Vec::new();
    for backend in backends.split(',') {
        let (this_tls, addr) =
            parse_backend_url(backend.trim()).map_err(|m| format!("backend: {m}"))?;
        if *tls.get_or_insert(this_tls) != this_tls {
            return Err("one route's backends are all TLS (wss://) or all plain".into());
        }
        addrs.push(addr);
    }
    let mut route = Route::with_defaults(prefix, addrs);
    if tls == Some(true) {
        // The system's roots, each backend's IP address as its name.
        route.options.backend_tls = Some(super::model::BackendTls::default());
    }
    Ok(route)
}
