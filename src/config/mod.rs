//! Typed, validated configuration.
//!
//! Loaded from TOML (`wsplice --config FILE`) or built from command-line flags. Every error names the
//! file, the line and the key, so the operator knows which line to fix.
//!
//! The public types are the contract the driver relies on; loading and validation live below them.
//!
//! ```
//! use wsplice::config::Config;
//!
//! let cfg = Config::from_toml_str(
//!     r#"
//! listen = ["127.0.0.1:8000"]
//! [[route]]
//! prefix = "/notice/"
//! backends = ["127.0.0.1:50001"]
//! "#,
//!     "wsplice.toml",
//! )?;
//! assert_eq!(cfg.routes[0].prefix, "/notice");
//!
//! let err = Config::from_toml_str("listn = []\n", "wsplice.toml").unwrap_err();
//! assert_eq!((err.line(), err.key()), (Some(1), Some("listn")));
//! assert!(err.to_string().starts_with("wsplice.toml:1: unknown key `listn` (expected one of: listen,"));
//! # Ok::<(), wsplice::config::ConfigError>(())
//! ```
//!
//! # Where things are
//!
//! ```text
//!   model     the types above and their defaults
//!   error     ConfigError: file, line, key, message
//!   walk      the span-aware TOML walker: Table, Field, and the Key tables sections are made of
//!   value     value parsers: durations, sizes, addresses, networks, prefixes, hosts
//!   root      the top-level keys; where each section is read
//!   sections  [timeouts] [limits] [keepalive] [splice] [uring] [access_log] [proxy_protocol]
//!             [tls] [backend_pool]
//!   route     [[route]]
//!   names     backends by DNS name (`app:8080`, `srv:_ws._tcp.app`) and [dns]
//!   health    [route.health], and backends with weights
//!   cli       Config::from_cli: the --listen/--route flags; --tls-listen/--cert/--key
//! ```
//!
//! Each section's keys are listed once, in its `Key` table: the table says how each key is read,
//! and the "unknown key" error takes its hint from it. A new key is a field in `model` (with its
//! default) and one line in its section's table.

mod cli;
mod error;
mod health;
mod model;
mod names;
mod root;
mod route;
mod sections;
#[cfg(test)]
mod tests;
mod value;
mod walk;

use std::path::Path;

use toml::de::DeTable;

pub use cli::TlsFlags;
pub use error::ConfigError;
pub use model::{
    AccessLog, BackendPool, BackendProtocol, Balance, CertPair, CheckKind, Config, DriverMode,
    ForwardedFor, HashKey, Health, HealthCheck, Keepalive, Limits, LogFormat, ProxyIn,
    ProxyVersion, Relay, RelayMode, Route, RouteOptions, SameSite, StickyCookie, Timeouts, Tls,
    UnknownSni, Uring, WorkerModel,
};
pub use names::{decode_resolved, encode_resolved, srv_weights, BackendName, Dns, Resolved};
use walk::{Source, Table};

impl Config {
    /// Reads and validates a TOML file. Errors name `path` as given. Relative certificate,
    /// key and `backend_ca` paths are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_text(path).map(|(cfg, _)| cfg)
    }

    /// Like [`Config::load`], and also the text it parsed (worker processes parse exactly the
    /// bytes the supervisor validated).
    pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(Some(&file), None, None, format!("cannot read: {e}")))?;
        let mut cfg = Config::from_toml_str(&text, &file)?;
        if let Some(dir) = path.parent() {
            for pair in &mut cfg.tls.certs {
                for p in [&mut pair.cert, &mut pair.key] {
                    if p.is_relative() {
                        *p = dir.join(&*p);
                    }
                }
            }
            let cas = cfg.routes.iter_mut();
            for ca in cas.filter_map(|r| r.options.backend_tls.as_mut()?.ca.as_mut()) {
                if ca.is_relative() {
                    *ca = dir.join(&*ca);
                }
            }
        }
        Ok((cfg, text))
    }

    /// Parses and validates TOML text; `file` is only used in error messages.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        let src = Source { file, text };
        let doc = DeTable::parse(text).map_err(|e| src.syntax_error(&e))?;
        root::read(&Table::root(&src, doc.get_ref()))
    }
}
