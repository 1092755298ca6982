//! A configuration from command-line flags (`--listen`, `--route`, `--workers`, `--relay`).

use std::net::SocketAddr;

use super::root::MAX_WORKERS;
use super::value::{normalize_prefix, parse_backend};
use super::{Config, ConfigError, RelayMode, Route};

impl Config {
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

/// `PREFIX=HOST:PORT[,HOST:PORT...]`.
fn parse_route(raw: &str) -> Result<Route, String> {
    let Some((prefix, backends)) = raw.split_once('=') else {
        return Err(
            "expected PREFIX=HOST:PORT[,HOST:PORT...], such as /notice=127.0.0.1:50001".into(),
        );
    };
    let prefix = normalize_prefix(prefix).map_err(|m| format!("prefix: {m}"))?;
    let backends = backends
        .split(',')
        .map(|backend| parse_backend(backend.trim()).map_err(|m| format!("backend: {m}")))
        .collect::<Result<_, _>>()?;
    Ok(Route::with_defaults(prefix, backends))
}
