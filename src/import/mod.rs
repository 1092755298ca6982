//! `wsplice import nginx FILE` and `wsplice import apache FILE`: an existing reverse-proxy
//! configuration read with its own grammar and printed as an equivalent wsplice TOML.
//!
//! ```text
//!   nginx_parse   tokens (words, quotes, escapes, comments, `{ } ;`) -> a block tree; `include`
//!   apache_parse  directives and `<Section args>` blocks, line continuations; `Include`
//!   nginx/apache  the tree -> a Plan: listeners, certificates, mappings, notes
//!   rules         prefixes, the proxy path rule, times, rewrite-rule shapes
//!   plan          mappings merged into routes (hosts, duplicates, upgrade-only rules)
//!   emit          the Plan -> TOML, every note a `#` comment naming file:line and the reason
//! ```
//!
//! Nothing is dropped silently: each directive is either mapped or listed as a comment saying
//! why it was not. The TOML is checked with the same loader as `--config` before it is printed.

mod apache;
mod apache_parse;
mod emit;
mod nginx;
mod nginx_parse;
mod plan;
mod rules;

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use crate::config::Config;

/// Which server's configuration is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Apache,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Apache => "apache",
        }
    }
}

/// Why an import failed: a file that cannot be read, a syntax error (file and line), or a
/// configuration with nothing wsplice could serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl ImportError {
    pub(crate) fn at(loc: &Loc, message: impl Into<String>) -> ImportError {
        ImportError {
            file: loc.file.to_string(),
            line: Some(loc.line),
            message: message.into(),
        }
    }

    pub(crate) fn file(file: &Path, message: impl Into<String>) -> ImportError {
        ImportError {
            file: file.display().to_string(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ImportError {}

/// Where a directive was written: file (as the include named it) and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loc {
    pub file: Rc<str>,
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Reads `path` (and what it includes) as `kind` and returns the wsplice TOML.
pub fn import(kind: Kind, path: &Path) -> Result<String, ImportError> {
    let plan = match kind {
        Kind::Nginx => nginx::plan(&nginx_parse::parse_file(path)?),
        Kind::Apache => apache::plan(&apache_parse::parse_file(path)?),
    }?;
    let toml = emit::emit_checked(&plan, kind, path)?;
    // The same loader as `--config`: an import that would not load is a bug here, not the
    // operator's, and is reported as such.
    if let Err(e) = Config::from_toml_str(&toml, "the imported configuration") {
        return Err(ImportError::file(
            path,
            format!("the imported configuration does not load ({e}); this is a wsplice bug, please report it with the file"),
        ));
    }
    Ok(toml)
}

/// Deepest include nesting followed (a loop of includes stops here with an error).
const MAX_INCLUDE_DEPTH: usize = 32;

/// The files an `include` names: relative to the including file's directory, glob patterns
/// expanded in sorted order. A plain path must exist; a pattern may match nothing.
pub(crate) fn include_paths(
    loc: &Loc,
    from: &Path,
    pattern: &str,
    depth: usize,
) -> Result<Vec<PathBuf>, ImportError> {
    if depth >= MAX_INCLUDE_DEPTH {
        return Err(ImportError::at(
            loc,
            format!("includes nested more than {MAX_INCLUDE_DEPTH} deep (does {pattern:?} include itself?)"),
        ));
    }
    let path = Path::new(pattern);
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        from.parent().unwrap_or(Path::new(".")).join(path)
    };
    let text = full.display().to_string();
    if !pattern.contains(['*', '?', '[']) {
        if !full.exists() {
            return Err(ImportError::at(
                loc,
                format!("included file {text} does not exist"),
            ));
        }
        return Ok(vec![full]);
    }
    let entries = glob::glob(&text)
        .map_err(|e| ImportError::at(loc, format!("bad include pattern {pattern:?}: {e}")))?;
    let mut found = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| ImportError::at(loc, format!("include {pattern:?}: {e}")))?;
        if p.is_file() {
            found.push(p);
        }
    }
    found.sort();
    Ok(found)
}

/// Reads an included or given file; errors name the file, and the include line if any.
pub(crate) fn read_file(path: &Path, loc: Option<&Loc>) -> Result<String, ImportError> {
    std::fs::read_to_string(path).map_err(|e| {
        let why = format!("cannot read {}: {e}", path.display());
        match loc {
            Some(loc) => ImportError::at(loc, why),
            None => ImportError::file(path, format!("cannot read: {e}")),
        }
    })
}

/// `host:port` (or `[v6]:port`, or `host` with `default_port`) as socket addresses. Names are
/// resolved now: wsplice's backends and listeners are addresses. The second value says what was
/// resolved, for a note.
pub(crate) fn resolve(
    hostport: &str,
    default_port: u16,
) -> Result<(Vec<SocketAddr>, Option<String>), String> {
    let (host, port) = split_host_port(hostport, default_port)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok((vec![SocketAddr::new(ip, port)], None));
    }
    if host.is_empty() || host == "*" {
        return Ok((vec![SocketAddr::from(([0, 0, 0, 0], port))], None));
    }
    let mut addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    // IPv4 first, as most backends listen there; then in resolver order, once each.
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let note = format!(
        "{host} resolved at import time to {}: wsplice takes addresses; import again if they change",
        list.join(", ")
    );
    Ok((addrs, Some(note)))
}

/// A directive's arguments after its name, for notes: each after a space, quoted where it is
/// empty or `needs_quotes` (what the server's grammar would split or end it on).
pub(crate) fn push_args(s: &mut String, args: &[String], needs_quotes: impl Fn(&str) -> bool) {
    for a in args {
        s.push(' ');
        if a.is_empty() || needs_quotes(a) {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(a);
        }
    }
}

/// The name a TLS backend at `hostport` is asked for and checked against: its host, unless
/// that is an IP address (then the certificate must name the IP, wsplice's default).
pub(crate) fn tls_name(hostport: &str) -> Option<String> {
    let (host, _) = split_host_port(hostport, 443).ok()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && bare.parse::<IpAddr>().is_err()).then_some(host)
}

/// The note of every TLS backend: Apache and nginx do not verify by default; wsplice does.
pub(crate) const TLS_BACKEND_NOTE: &str = "TLS to this backend: wsplice verifies its certificate (Apache and nginx do not by default), against the system's roots; if a private CA signed it, add backend_ca = \"FILE\" to the route";

fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad_port = |p: &str| format!("invalid port {p:?} in {s:?}");
    if let Some(rest) = s.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err(format!("unclosed '[' in {s:?}"));
        };
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad_port(p))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("unexpected {after:?} after the address in {s:?}")),
        };
        return Ok((format!("[{ip}]"), port));
    }
    match s.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => {
            Ok((host.to_owned(), p.parse().map_err(|_| bad_port(p))?))
        }
        _ => Ok((s.to_owned(), default_port)),
    }
}

/// A URL split as proxies write them: `scheme://authority[/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub scheme: String,
    pub authority: String,
    /// `None` when the URL ends after the authority.
    pub path: Option<String>,
}

pub(crate) fn split_url(s: &str) -> Option<Url> {
    let (scheme, rest) = s.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
        None => (rest, None),
    };
    if scheme.is_empty() || authority.is_empty() {
        return None;
    }
    Some(Url {
        scheme: scheme.to_ascii_lowercase(),
        authority: authority.to_owned(),
        path,
    })
}

/// The wsplice spelling of a duration (humantime, as `[timeouts]` reads it).
pub(crate) fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests;
